"""The learner's WeightSource for vLLM's nccl backend keeps vLLM's contract: metadata() matches
iteration element for element (name, dtype, full shape), iteration is a fresh full pass each time,
and a pass counts the buckets it gathered and the bytes it yielded (the NCCL sync's stats)."""

import torch

from apo_pipeline.engine.buckets import make_buckets
from apo_pipeline.engine.nccl_source import ZeroWeightSource


def test_metadata_matches_iteration_and_passes_repeat():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(11, 8), torch.nn.Linear(8, 5), torch.nn.LayerNorm(5))
    source = ZeroWeightSource(model, bucket_bytes=64)
    meta = source.metadata()
    first = list(source)
    assert [(m.name, m.dtype, m.shape) for m in meta] == [(n, t.dtype, tuple(t.shape)) for n, t in first]
    assert [n for n, _ in first] == [n for n, _ in model.named_parameters()]
    assert all(torch.equal(t, p) for (_, t), (_, p) in zip(first, model.named_parameters()))
    assert [n for n, _ in source] == [n for n, _ in first]
    assert source.nbytes == sum(p.numel() * p.element_size() for p in model.parameters())
    assert source.buckets == len(list(make_buckets(model.named_parameters(), 64))) > 1
