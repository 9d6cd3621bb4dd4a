"""One weight synchronizer per pipeline: how the learner's weights reach the generation engines.

Chosen once, when the pipeline is built (`make_synchronizer`), as in NeMo-RL's refit, where
colocated or not and collective or not are settled at setup and the loop only says "sync":

- `ObjectStoreSync` (`sync.backend` cpu, or auto without GPUs): learner rank 0 streams
  `buckets.PackedBucket`s through the `weight-sync` actor (`WeightSync.sync_stream`), which feeds
  them to every engine; ranks > 0 join each bucket's ZeRO-3 gather meanwhile.
- `NcclSync` (`nccl`, GPU): vLLM's NCCL weight-transfer group (rank 0 + every engine worker),
  formed on the first sync; rank 0 sends, the other ranks join the gathers.
- `ColocatedSync` (`cluster.colocate`): the engines share the learner's devices, so they sleep
  while it trains (`before_train` / `after_train`: vLLM sleep mode, GPU only; a no-op on CPU),
  and weights move through the object store (NCCL refuses two ranks on one GPU).

Every `sync()` returns `SyncStats`; the pipeline logs its bytes and buckets.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import ray
from ray.actor import ActorHandle

from apo_pipeline.engine.buckets import CPU_WEIGHT_TRANSFER_BACKEND, SyncStats
from apo_pipeline.engine.learner_group import LearnerGroup
from apo_pipeline.engine.pool import GenerationPool
from apo_pipeline.engine.worker_group import get_all


class WeightSynchronizer(ABC):
    """Moves the learner's full weights into every engine of `pool` (`bucket_bytes` per bucket).

    `before_train` / `after_train` bracket the learner's optimizer steps; here they do nothing
    (the engines keep their own devices)."""

    def __init__(self, learner: LearnerGroup, pool: GenerationPool, weight_sync: ActorHandle, bucket_bytes: int) -> None:
        self.learner = learner
        self.pool = pool
        self.weight_sync = weight_sync
        self.bucket_bytes = bucket_bytes

    @abstractmethod
    def sync(self, weights: str | None = None) -> SyncStats:
        """Push the learner's current weights (the kept weights `weights` when given, e.g. a streamed
        round's start) into every engine (a collective over the learner ranks)."""

    def before_train(self) -> None:
        """Nothing to free: the engines do not share the learner's devices."""

    def after_train(self) -> None:
        """Nothing to restore."""


class ObjectStoreSync(WeightSynchronizer):
    """Buckets through the Ray object store (the `apo_object_store` vLLM backend)."""

    def sync(self, weights: str | None = None) -> SyncStats:
        """Rank 0 streams its buckets into every engine (at most the sync actor's `max_inflight` alive
        at once); ranks > 0 join the gathers."""
        ranks = self.learner.ranks
        joins = [rank.join_weight_gathers.remote(self.bucket_bytes, weights) for rank in ranks[1:]]
        stats = self.weight_sync.sync_stream.remote(ranks[0], "stream_weight_buckets", self.bucket_bytes, weights)
        return get_all([stats, *joins])[0]


class ColocatedSync(ObjectStoreSync):
    """Engines on the learner's devices: asleep while the learner trains, weights by object store."""

    def before_train(self) -> None:
        """vLLM sleep mode frees the engines' memory (GPU; False and nothing done on CPU)."""
        self.pool.sleep()

    def after_train(self) -> None:
        self.pool.wake_up()


class NcclSync(WeightSynchronizer):
    """GPU: vLLM's `nccl` weight-transfer backend (written to vLLM 0.32's API; not run on CPU)."""

    def __init__(self, learner: LearnerGroup, pool: GenerationPool, weight_sync: ActorHandle, bucket_bytes: int) -> None:
        super().__init__(learner, pool, weight_sync, bucket_bytes)
        self.group_formed = False

    def sync(self, weights: str | None = None) -> SyncStats:
        """Form the group on first use (rank 0's node IP, a port free there), then send once."""
        start = time.perf_counter()
        if not self.group_formed:
            rank0 = self.learner.ranks[0]
            ip, port = ray.get([rank0.node_ip.remote(), rank0.free_port.remote()])
            self.learner.group.call("init_nccl_sender", self.weight_sync, ip, port, self.bucket_bytes)
            self.group_formed = True
        buckets, nbytes = self.learner.group.call("send_weights_nccl", weights)[0]
        return SyncStats(time.perf_counter() - start, nbytes, buckets, self.pool.num_engines)


def make_synchronizer(
    learner: LearnerGroup, pool: GenerationPool, weight_sync: ActorHandle, bucket_bytes: int, *, colocate: bool
) -> WeightSynchronizer:
    """The synchronizer for the engines' weight-transfer backend (`pool.backend`) and placement."""
    if pool.backend == "nccl":
        return NcclSync(learner, pool, weight_sync, bucket_bytes)
    if pool.backend != CPU_WEIGHT_TRANSFER_BACKEND:
        raise ValueError(f"sync.backend: no synchronizer for the engines' backend {pool.backend!r}")
    return (ColocatedSync if colocate else ObjectStoreSync)(learner, pool, weight_sync, bucket_bytes)
