"""Weight sync learner -> every generation engine, through vLLM's weight-transfer API.

Contract for the learner (what `apo_pipeline/engine/learner*.py` calls; nothing else is needed):

CPU backend (`sync.backend` cpu, or auto without GPUs) -- data through the Ray object store:
  1. iterate the full parameters as `(name, tensor)` pairs with HF checkpoint names
     (`model.layers.0.self_attn.q_proj.weight`, ...; no `module.` prefix). Under ZeRO-3 gather
     them group by group (`deepspeed.zero.GatheredParameters`) and put each bucket while its
     parameters are gathered: `ray.put` copies, so the gathered memory may be freed afterwards;
  2. either `refs = put_buckets(named_tensors, bucket_bytes(sync))` on one rank (the others only
     join the gathers) and the driver calls `weight_sync.sync.remote(refs)`;
     or an actor method that yields `pack_bucket(b)` for `b in make_buckets(...)` (a Ray
     generator) and the driver calls `weight_sync.sync_stream.remote(actor, "method", *args)`:
     the actor streams buckets while later ones gather, and at most `max_inflight` buckets are
     alive at once (Ray cannot pass a generator between processes, so the sync actor calls it);
  3. both return `SyncStats`. Buckets are fed to all engines concurrently, one RPC per engine
     per bucket.

GPU backend (`nccl`) -- data through NCCL from learner rank 0, control through this actor:
  every learner rank calls `nccl_sender(weight_sync, rank=..., master_address=..., master_port=...,
  source=...)` once (rank 0 joins the group of 1 + num_engines * engine_tp ranks) and
  `sender.send_weights()` after each update. `source` is a `vllm...base.WeightSource`
  (`ModuleSource(model)` for a plain module; a gathering source under ZeRO-3). This path is
  written to vLLM 0.32's API and cannot run without GPUs.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import ray
import torch

from apo_pipeline.config.sections import SyncConfig

if TYPE_CHECKING:
    from vllm.distributed.weight_transfer.base import TrainerWeightTransferEngine, WeightSource

    from apo_pipeline.engine.pool import GenerationPool

MIB = 1 << 20


def bucket_bytes(sync: SyncConfig) -> int:
    """`sync.bucket_mb` in bytes."""
    return max(1, int(sync.bucket_mb * MIB))


def make_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], max_bytes: int) -> Iterator[dict[str, torch.Tensor]]:
    """Group tensors, in order, into dicts of at most `max_bytes` bytes each.

    A tensor larger than `max_bytes` gets a bucket of its own. Pure: only shapes and dtypes are
    read (meta tensors work), nothing is copied. ValueError on a repeated name or `max_bytes` <= 0.
    """
    if max_bytes <= 0:
        raise ValueError(f"bucket size must be positive, got {max_bytes} bytes")
    seen: set[str] = set()
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in named_tensors:
        if name in seen:
            raise ValueError(f"parameter {name!r} appears twice in the weights to sync")
        seen.add(name)
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > max_bytes:
            yield bucket
            bucket, size = {}, 0
        bucket[name] = tensor
        size += nbytes
    if bucket:
        yield bucket


@dataclass
class PackedBucket:
    """Tensors as raw bytes, which Ray stores and reads back zero-copy (any dtype, bf16 too).

    `data[i]` is a flat uint8 array holding `names[i]` of dtype `torch.<dtypes[i]>`, `shapes[i]`.
    """

    names: list[str]
    dtypes: list[str]
    shapes: list[tuple[int, ...]]
    data: list[np.ndarray]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.data)

    def tensors(self) -> list[tuple[str, torch.Tensor]]:
        """`(name, tensor)` views of the bytes (read-only memory when fetched from Ray)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return [
                (name, torch.from_numpy(raw).view(getattr(torch, dtype)).reshape(shape))
                for name, dtype, shape, raw in zip(self.names, self.dtypes, self.shapes, self.data)
            ]


def pack_bucket(bucket: dict[str, torch.Tensor]) -> PackedBucket:
    """A bucket of (CPU or device) tensors as a `PackedBucket` (copies device tensors to CPU)."""
    flat = {name: t.detach().to("cpu").contiguous().reshape(-1) for name, t in bucket.items()}
    return PackedBucket(
        names=list(bucket),
        dtypes=[str(t.dtype).removeprefix("torch.") for t in bucket.values()],
        shapes=[tuple(t.shape) for t in bucket.values()],
        data=[t.view(torch.uint8).numpy() for t in flat.values()],
    )


def put_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], max_bytes: int) -> list[ray.ObjectRef]:
    """`ray.put` every bucket of `make_buckets(named_tensors, max_bytes)`; the refs, in order."""
    return [ray.put(pack_bucket(b)) for b in make_buckets(named_tensors, max_bytes)]


@dataclass
class SyncStats:
    """One sync: wall `seconds`, `bytes` per engine, `buckets`, `engines` fed."""

    seconds: float
    bytes: int
    buckets: int
    engines: int

    @property
    def mib_per_s(self) -> float:
        return self.bytes / MIB / max(self.seconds, 1e-9)


@ray.remote
class WeightSync:
    """The `weight-sync` actor: bucketed object-store sync (CPU) and vLLM's control plane (NCCL)."""

    def __init__(self, pool: "GenerationPool", max_inflight: int = 2) -> None:
        self.pool = pool
        self.max_inflight = max_inflight

    def sync(self, bucket_source: Iterable[ray.ObjectRef]) -> SyncStats:
        """Load every bucket (refs of `PackedBucket`, in order) into every engine."""
        start = time.perf_counter()
        buckets, nbytes = self.pool.update_weights(bucket_source, max_inflight=self.max_inflight)
        return SyncStats(time.perf_counter() - start, nbytes, buckets, self.pool.num_engines)

    def sync_stream(self, actor: ray.actor.ActorHandle, method: str, *args: Any) -> SyncStats:
        """`sync` over the buckets yielded by `actor.method(*args)`, called as a Ray streaming generator."""
        call = getattr(actor, method).options(
            num_returns="streaming", _generator_backpressure_num_objects=self.max_inflight
        )
        return self.sync(call.remote(*args))

    def world_size(self) -> int:
        """Ranks of an NCCL transfer group: the sending learner rank + every engine worker."""
        return 1 + self.pool.num_engines * self.pool.engine_tp

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.pool.init_weight_transfer(init_info)

    def start_weight_update(self) -> None:
        self.pool.fan_out("start_weight_update")

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self.pool.fan_out("update_weights", update_info)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.pool.fan_out("finish_weight_update")


class WeightSyncClient:
    """vLLM's `VLLMWeightSyncClient` protocol over the `weight-sync` actor (trainer side)."""

    def __init__(self, weight_sync: ray.actor.ActorHandle) -> None:
        self.actor = weight_sync

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        ray.get(self.actor.init_weight_transfer_engine.remote(init_info))

    def start_weight_update(self) -> None:
        ray.get(self.actor.start_weight_update.remote())

    def update_weights(self, update_info: dict[str, Any]) -> None:
        ray.get(self.actor.update_weights.remote(update_info))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        ray.get(self.actor.finish_weight_update.remote(weight_version))


def nccl_sender(
    weight_sync: ray.actor.ActorHandle,
    *,
    rank: int,
    master_address: str,
    master_port: int,
    source: "WeightSource",
) -> "TrainerWeightTransferEngine":
    """GPU only. vLLM's NCCL trainer engine for learner `rank`; rank 0 sends (call on every rank).

    Rank 0 opens the group as NCCL rank 0 on `master_address:master_port`; engine i's workers take
    ranks 1 + i * engine_tp ... (offsets applied by the pool). Then `send_weights()` per sync.
    """
    from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

    info = NCCLTrainerInitInfo(
        master_address=master_address,
        master_port=master_port,
        world_size=ray.get(weight_sync.world_size.remote()),
        rank=rank,
    )
    return WeightTransferTrainerFactory.trainer_init(info, client=WeightSyncClient(weight_sync), source=source)
