"""Seconds per full weight sync against one in-memory copy of the same bytes, and a bucket sweep.

Setup: one local Ray with a `LearnerGroup` of 1 rank (DeepSpeed ZeRO-2, fp32) and a
`GenerationPool` of 1 engine on the benchmark model, 1 CPU each, and the `weight-sync` actor.
A sync is `ObjectStoreSync(learner, pool, weight_sync, bucket_bytes).sync()` timed from the driver: rank 0
streams packed buckets through the Ray object store, the weight-sync actor feeds them to the
engine, which loads them with vLLM's weight-transfer API. The copy is `dst.copy_(src)` for every
parameter of the same model into preallocated tensors, in the driver on 1 torch thread. Syncs at
every bucket size and the copy alternate round by round.

Key `sync_vs_memcpy` = sync seconds / copy seconds at the default bucket size
(`SyncConfig().bucket_mb`, reported; goal <= 3).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable

import ray
import torch
from transformers import AutoModelForCausalLM

from apo_pipeline.config.sections import AlgorithmConfig, ClusterConfig, LearnerConfig, ModelConfig, SyncConfig
from apo_pipeline.engine.learner_group import LearnerGroup
from apo_pipeline.engine.placement import Placement
from apo_pipeline.engine.pool import GenerationPool
from apo_pipeline.engine.buckets import MIB
from apo_pipeline.engine.synchronizer import ObjectStoreSync
from apo_pipeline.engine.weight_sync import WeightSync
from common import MAX_MODEL_LEN, SEED, build_model, interleave, model_info, ratio, start_ray, summary, write_result

BUCKETS_MIB = (1, 4, 16, 64)
DEFAULT_MIB = int(SyncConfig().bucket_mb)
REPEATS = 5


def copier(model_dir: str) -> tuple[Callable[[], None], int]:
    """A function copying every parameter of the model into preallocated tensors; the bytes it copies."""
    sources = [p.detach() for p in AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).parameters()]
    targets = [torch.empty_like(t) for t in sources]

    def copy() -> None:
        for target, source in zip(targets, sources):
            target.copy_(source)

    return copy, sum(t.numel() * t.element_size() for t in sources)


def main() -> None:
    torch.set_num_threads(1)  # the copy gets one thread, like every actor
    start_ray()
    cluster = ClusterConfig(num_engines=1, learner_ranks=1)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(tmp)
        model = ModelConfig(path=model_dir, max_model_len=MAX_MODEL_LEN)
        placement = Placement(cluster, prefix="bench-sync").create()
        pool = GenerationPool(model_dir, model, cluster, placement, seed=SEED)
        learner = LearnerGroup(model, LearnerConfig(), AlgorithmConfig(), placement, total_steps=1, seed=SEED)
        sync = WeightSync.options(**placement.options("weight-sync")).remote(pool)
        copy, copied_bytes = copier(model_dir)

        syncs = {mib: ObjectStoreSync(learner, pool, sync, mib * MIB) for mib in BUCKETS_MIB}
        stats = {mib: syncs[mib].sync() for mib in BUCKETS_MIB}
        cases = {f"sync_{mib}MiB": syncs[mib].sync for mib in BUCKETS_MIB}
        seconds = interleave({**cases, "memcpy": copy}, repeats=REPEATS)
        memcpy = summary(seconds["memcpy"])
        sweep = {}
        for mib in BUCKETS_MIB:
            row = summary(seconds[f"sync_{mib}MiB"])
            sweep[mib] = {"bucket_mib": mib, "buckets": stats[mib].buckets, "bytes": stats[mib].bytes,
                          **row, "ratio": ratio(row["median_s"], memcpy["median_s"])}
        best = min(BUCKETS_MIB, key=lambda mib: sweep[mib]["median_s"])
        result = {
            "ratio": sweep[DEFAULT_MIB]["ratio"],
            "goal": "<= 3",
            "bucket_mib": DEFAULT_MIB,
            "sync_s": sweep[DEFAULT_MIB]["median_s"],
            "sync_mib_per_s": stats[DEFAULT_MIB].bytes / MIB / sweep[DEFAULT_MIB]["median_s"],
            "memcpy": {**memcpy, "bytes": copied_bytes},
            "memcpy_mib_per_s": copied_bytes / MIB / memcpy["median_s"],
            "best_bucket_mib": best,
            "sweep": list(sweep.values()),
            "model": model_info(model_dir),
        }
        write_result("sync_vs_memcpy", result)
        swept = ", ".join(f"{mib} MiB {sweep[mib]['ratio']:.1f}" for mib in BUCKETS_MIB)
        print(f"sync_vs_memcpy = {result['ratio']:.2f} at {DEFAULT_MIB} MiB "
              f"({result['sync_s']:.3f} s vs {memcpy['median_s']:.4f} s); sweep: {swept}")
        ray.kill(sync)
        learner.shutdown()
        for engine in pool.engines:
            ray.kill(engine)
        placement.remove()
    ray.shutdown()


if __name__ == "__main__":
    main()
