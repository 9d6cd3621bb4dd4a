"""Everything that differs between vLLM on CPU and on GPU, in one place.

An engine actor calls `apply_engine_env()` first thing in its process (before `vllm` is
imported there) and builds its engine with `build_llm(...)`; the keyword arguments come from
`llm_kwargs(...)` (pure, unit-testable).

CPU (tested): the V1 engine core runs in the actor's own process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`, `distributed_executor_backend="uni"`), float32 unless the
model config names a dtype, eager mode, a KV cache of `cluster.kv_cache_gib` GiB.
GPU (written to vLLM 0.32's documented API, not run here): `tensor_parallel_size=tp` with
vLLM's Ray executor when tp > 1 (its workers go into the actor's placement group, which the
actor captures), `gpu_memory_utilization` from the config and sleep mode when colocated.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal

from apo_pipeline.config.sections import ClusterConfig, SyncConfig
from apo_pipeline.engine.buckets import CPU_WEIGHT_TRANSFER_BACKEND

if TYPE_CHECKING:
    from vllm import LLM

GIB = 1 << 30
# vLLM's CPU default of concurrent sequences per engine (LLM class). The CPU token budget per step is
# raised to CPU_MAX_NUM_SEQS * max_model_len so that no prefill is ever split: on CPU a split prefill
# of a seeded request crashes vLLM 0.32 ("CPU Generator does not use offset", when it rewinds the
# request's generator), which real prompts (~60 tokens x 200 requests > the 4096 default) trigger.
CPU_MAX_NUM_SEQS = 256
LogprobsMode = Literal["processed_logprobs", "raw_logprobs"]


# The engine core stays in the actor's process (CPU and GPU alike): no engine-core subprocess,
# and a weight-transfer backend registered in the actor is the one the worker sees.
ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false"}


def apply_engine_env() -> None:
    """Set `ENGINE_ENV` in this process (call before the first `import vllm`)."""
    os.environ.update(ENGINE_ENV)


def sync_backend(sync: SyncConfig, cluster: ClusterConfig) -> str:
    """The vLLM weight-transfer backend name: `nccl` on GPU unless `cpu` is asked for or the engines
    are colocated (NCCL refuses two ranks on one GPU), else ours.

    Ours is registered in the engine actor's process, so on GPU it needs the in-process executor
    (engine_tp == 1); vLLM's Ray executor would build workers that never saw the registration.
    """
    if sync.backend == "nccl" or (sync.backend == "auto" and cluster.use_gpu and not cluster.colocate):
        if not cluster.use_gpu:
            raise ValueError("sync.backend: nccl needs cluster.use_gpu=true")
        if cluster.colocate:
            raise ValueError("sync.backend: nccl cannot reach colocated engines (NCCL refuses two ranks on one GPU); use cpu")
        return "nccl"
    if cluster.engine_tp > 1:
        raise ValueError("sync.backend: cpu needs cluster.engine_tp = 1 (use nccl for tensor-parallel engines)")
    return CPU_WEIGHT_TRANSFER_BACKEND


def llm_kwargs(
    model_path: str,
    cluster: ClusterConfig,
    *,
    tp: int = 1,
    dtype: str = "auto",
    max_model_len: int,
    seed: int = 0,
    logprobs_mode: LogprobsMode = "processed_logprobs",
    max_logprobs: int = 20,
    weight_transfer_backend: str | None = None,
    sleep_mode: bool = False,
    trust_remote_code: bool = False,
    gpu_memory_utilization: float | None = None,
    block_size: int | None = None,
    log_stats: bool = False,
) -> dict[str, Any]:
    """Keyword arguments of `vllm.LLM` for one engine of `tp` devices (tp is 1 on CPU).

    `sleep_mode` (GPU only) lets a colocated engine free its memory for the learner.
    `gpu_memory_utilization` (GPU) overrides `cluster.gpu_memory_utilization` for this engine;
    `block_size` (tokens per KV-cache block, the unit prefix caching reuses) overrides vLLM's
    default; `log_stats` keeps vLLM's stats on (`LLM.get_metrics()`: prefix-cache hits, tokens).
    """
    kwargs: dict[str, Any] = {
        "model": model_path,
        "tokenizer": model_path,
        "max_model_len": max_model_len,
        "seed": seed,
        "logprobs_mode": logprobs_mode,
        "max_logprobs": max_logprobs,
        "trust_remote_code": trust_remote_code,
        "enable_prefix_caching": True,
    }
    if weight_transfer_backend is not None:
        kwargs["weight_transfer_config"] = {"backend": weight_transfer_backend}
    if block_size is not None:
        kwargs["block_size"] = block_size
    if log_stats:
        kwargs["disable_log_stats"] = False
    if cluster.use_gpu:
        kwargs.update(
            dtype=dtype,
            tensor_parallel_size=tp,
            distributed_executor_backend="ray" if tp > 1 else "uni",
            gpu_memory_utilization=gpu_memory_utilization or cluster.gpu_memory_utilization,
            enable_sleep_mode=sleep_mode,
        )
        return kwargs
    if tp != 1:
        raise ValueError(f"cluster.engine_tp / judge_tp = {tp}: tensor parallelism needs cluster.use_gpu=true")
    kwargs.update(
        dtype="float32" if dtype == "auto" else dtype,
        enforce_eager=True,
        distributed_executor_backend="uni",
        kv_cache_memory_bytes=int(cluster.kv_cache_gib * GIB),
        max_num_seqs=CPU_MAX_NUM_SEQS,
        max_num_batched_tokens=CPU_MAX_NUM_SEQS * max_model_len,
    )
    return kwargs


def build_llm(kwargs: dict[str, Any]) -> "LLM":
    """Build the engine; registers our CPU weight-transfer backend first when it is selected."""
    backend = kwargs.get("weight_transfer_config", {}).get("backend")
    if backend == CPU_WEIGHT_TRANSFER_BACKEND:
        from apo_pipeline.engine.weight_transfer_cpu import register_cpu_backend

        register_cpu_backend()
    from vllm import LLM

    return LLM(**kwargs)
