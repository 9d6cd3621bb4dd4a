"""What the engines are built with and the weight-sync bucket format, without starting any engine:
vLLM's settings per device, prompt encoding, request seeds, buckets (the engines themselves run in
tests/integration/test_generation_pool.py and test_weight_sync.py)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from apo_pipeline.config.sections import ClusterConfig, SyncConfig
from apo_pipeline.engine.buckets import bucket_bytes, make_buckets, pack_bucket
from apo_pipeline.engine.generation import encode_prompt, request_seed
from apo_pipeline.engine.vllm_env import CPU_WEIGHT_TRANSFER_BACKEND, llm_kwargs, sync_backend
from apo_pipeline.task.tiny_model import random_tiny_model


def test_engine_settings_per_device() -> None:
    cpu = llm_kwargs("m", ClusterConfig(kv_cache_gib=0.25), max_model_len=64, weight_transfer_backend="x")
    assert cpu["distributed_executor_backend"] == "uni" and cpu["dtype"] == "float32" and cpu["enforce_eager"]
    assert cpu["kv_cache_memory_bytes"] == 1 << 28 and cpu["weight_transfer_config"] == {"backend": "x"}
    assert cpu["max_num_batched_tokens"] == cpu["max_num_seqs"] * 64  # no split prefill on CPU (vllm_env.py)
    gpu = llm_kwargs("m", ClusterConfig(use_gpu=True, colocate=True), tp=2, max_model_len=64, sleep_mode=True)
    assert gpu["distributed_executor_backend"] == "ray" and gpu["tensor_parallel_size"] == 2
    assert gpu["enable_sleep_mode"] and gpu["gpu_memory_utilization"] == 0.4 and "enforce_eager" not in gpu
    with pytest.raises(ValueError, match="tensor parallelism needs"):
        llm_kwargs("m", ClusterConfig(), tp=2, max_model_len=64)
    assert sync_backend(SyncConfig(), ClusterConfig()) == CPU_WEIGHT_TRANSFER_BACKEND
    assert sync_backend(SyncConfig(), ClusterConfig(use_gpu=True)) == "nccl"
    with pytest.raises(ValueError, match="engine_tp = 1"):
        sync_backend(SyncConfig(backend="cpu"), ClusterConfig(use_gpu=True, engine_tp=2))


def test_encode_prompt_applies_the_chat_template(tmp_path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(random_tiny_model(tmp_path / "model", seed=0))
    text, ids = encode_prompt(tokenizer, "reverse 1 2 =")
    assert text == "reverse 1 2 =" and tokenizer.decode(ids) == text
    text, ids = encode_prompt(tokenizer, [{"role": "user", "content": "reverse 1 2 ="}])
    assert text == "<|im_start|>user\nreverse 1 2 =<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(ids) == text


def test_request_seed_depends_on_every_index() -> None:
    seeds = {request_seed(s, p, t, k) for s in (0, 1) for p in (0, 1) for t in (0, 1) for k in (0, 1)}
    assert len(seeds) == 16 and all(0 <= x < 2**63 for x in seeds)  # vLLM keeps request seeds as int64


def test_make_buckets_respects_the_size_and_order() -> None:
    tensors = [("a", torch.zeros(10)), ("b", torch.zeros(10)), ("c", torch.zeros(30)), ("d", torch.zeros(5))]
    buckets = list(make_buckets(tensors, max_bytes=80))
    assert [list(b) for b in buckets] == [["a", "b"], ["c"], ["d"]]
    assert bucket_bytes(0.5) == 512 * 1024
    with pytest.raises(ValueError, match="appears twice"):
        list(make_buckets([("a", torch.zeros(1)), ("a", torch.zeros(1))], max_bytes=8))


def test_pack_bucket_round_trips_any_dtype() -> None:
    bucket = {"w": torch.randn(3, 4), "h": torch.randn(5).to(torch.bfloat16), "s": torch.tensor(2.5)}
    packed = pack_bucket(bucket)
    assert packed.nbytes == 48 + 10 + 4
    for name, tensor in packed.tensors():
        assert tensor.dtype == bucket[name].dtype and torch.equal(tensor, bucket[name])
