"""GPU weight sync: the learner's side of vLLM's `nccl` weight-transfer backend.

`ZeroWeightSource` is a `vllm.distributed.weight_transfer.base.WeightSource` over a DeepSpeed
module at any ZeRO stage: `metadata()` reads full shapes without gathering (ZeRO-3 `ds_shape`),
iteration gathers bucket by bucket (`full_weights.gathered_buckets`, a collective, so every rank
iterates in lockstep) and yields full tensors. Learner rank 0 sends them over NCCL to every
engine worker; the other ranks only join the gathers. GPU only: written to vLLM 0.32's API,
not run on the CPU machines of this project.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

from apo_pipeline.engine.full_weights import full_shape, gathered_buckets


class ZeroWeightSource(WeightSource):
    """Full (gathered) parameters of `module` with HF names, in `named_parameters()` order.

    `buckets` / `nbytes`: gathered buckets and full-weight bytes of the last complete iteration."""

    def __init__(self, module: torch.nn.Module, bucket_bytes: int) -> None:
        self._module = module
        self._bucket_bytes = bucket_bytes
        self.buckets = 0
        self.nbytes = 0

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(name, p.dtype, tuple(full_shape(p))) for name, p in self._module.named_parameters()]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        buckets = nbytes = 0
        for bucket in gathered_buckets(self._module, self._bucket_bytes):
            buckets += 1
            nbytes += sum(t.numel() * t.element_size() for t in bucket.values())
            yield from bucket.items()
        self.buckets, self.nbytes = buckets, nbytes
