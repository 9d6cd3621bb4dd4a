"""One weight synchronizer per pipeline, chosen from the engines' backend and the placement.

The pool here is a recording stand-in: what is checked is the choice and the colocated bracket
around training (vLLM sleep mode needs a GPU; on CPU the real `GenerationPool.sleep` is a no-op).
The real syncs run in tests/integration/test_weight_sync.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from apo_pipeline.config.sections import ClusterConfig, SyncConfig
from apo_pipeline.engine.buckets import CPU_WEIGHT_TRANSFER_BACKEND
from apo_pipeline.engine.synchronizer import ColocatedSync, NcclSync, ObjectStoreSync, make_synchronizer
from apo_pipeline.engine.vllm_env import sync_backend


class RecordingPool(SimpleNamespace):
    def sleep(self) -> bool:
        self.calls.append("sleep")
        return False

    def wake_up(self) -> bool:
        self.calls.append("wake_up")
        return False


def choose(backend: str, colocate: bool):
    pool = RecordingPool(backend=backend, num_engines=1, calls=[])
    return make_synchronizer(SimpleNamespace(), pool, SimpleNamespace(), 1 << 20, colocate=colocate), pool


def test_the_backend_and_placement_choose_the_synchronizer() -> None:
    assert type(choose(CPU_WEIGHT_TRANSFER_BACKEND, colocate=False)[0]) is ObjectStoreSync
    assert type(choose(CPU_WEIGHT_TRANSFER_BACKEND, colocate=True)[0]) is ColocatedSync
    assert type(choose("nccl", colocate=False)[0]) is NcclSync
    with pytest.raises(ValueError, match="no synchronizer"):
        choose("ipc", colocate=False)


def test_only_colocated_engines_sleep_while_the_learner_trains() -> None:
    for colocate, expected in ((False, []), (True, ["sleep", "wake_up"])):
        synchronizer, pool = choose(CPU_WEIGHT_TRANSFER_BACKEND, colocate)
        synchronizer.before_train()
        synchronizer.after_train()
        assert pool.calls == expected


def test_colocated_engines_never_get_nccl() -> None:
    gpu_colocated = ClusterConfig(use_gpu=True, colocate=True)
    assert sync_backend(SyncConfig(), gpu_colocated) == CPU_WEIGHT_TRANSFER_BACKEND
    assert sync_backend(SyncConfig(), ClusterConfig(use_gpu=True)) == "nccl"
    with pytest.raises(ValueError, match="nccl cannot reach colocated engines"):
        sync_backend(SyncConfig(backend="nccl"), gpu_colocated)
