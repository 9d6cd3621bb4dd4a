"""The `weight-sync` actor: the engines' side of a weight sync, through vLLM's weight-transfer API.

The driver picks one synchronizer per pipeline (`engine/synchronizer.py`); this actor is what the
two transports share on the engines' side:

CPU backend (`sync.backend` cpu, or auto without GPUs) -- data through the Ray object store:
  `sync_stream(actor, method, *args)` calls `actor.method(*args)` as a Ray streaming generator
  (learner rank 0's `stream_weight_buckets`, yielding `buckets.PackedBucket`s while later buckets
  gather; Ray cannot pass a generator between processes, so this actor makes the call) and feeds
  each bucket to all engines at once, at most `max_inflight` buckets alive; returns `SyncStats`.

GPU backend (`nccl`) -- data through NCCL from learner rank 0, control through this actor:
  every learner rank calls `nccl_sender(weight_sync, rank=..., master_address=..., master_port=...,
  source=...)` once (rank 0 joins the group of 1 + num_engines * engine_tp ranks) and
  `sender.send_weights()` after each update. `source` is a `vllm...base.WeightSource`
  (`ModuleSource(model)` for a plain module; a gathering source under ZeRO-3). This path is
  written to vLLM 0.32's API and cannot run without GPUs.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import ray

from apo_pipeline.engine.buckets import SyncStats

if TYPE_CHECKING:
    from vllm.distributed.weight_transfer.base import TrainerWeightTransferEngine, WeightSource

    from apo_pipeline.engine.pool import GenerationPool

@ray.remote
class WeightSync:
    """The `weight-sync` actor: bucketed object-store sync (CPU) and vLLM's control plane (NCCL)."""

    def __init__(self, pool: "GenerationPool", max_inflight: int = 2) -> None:
        self.pool = pool
        self.max_inflight = max_inflight

    def sync_stream(self, actor: ray.actor.ActorHandle, method: str, *args: Any) -> SyncStats:
        """Load every bucket yielded by `actor.method(*args)` (`PackedBucket`s, in order; called as a
        Ray streaming generator) into every engine."""
        start = time.perf_counter()
        call = getattr(actor, method).options(
            num_returns="streaming", _generator_backpressure_num_objects=self.max_inflight
        )
        buckets, nbytes = self.pool.update_weights(call.remote(*args), max_inflight=self.max_inflight)
        return SyncStats(time.perf_counter() - start, nbytes, buckets, self.pool.num_engines)

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
