"""Placement on a real local Ray: colocated engines share the learner's bundles, names by role,
and the GPU configs put a judge (worker) on every GPU they reserve for the judge."""

from __future__ import annotations

import multiprocessing
import traceback
from pathlib import Path

import pytest
import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from apo_pipeline.config import JOB_CONFIGS, load_config
from apo_pipeline.config.load import read_yaml
from apo_pipeline.config.sections import ClusterConfig
from apo_pipeline.engine.judge_pool import judge_options
from apo_pipeline.engine.placement import Placement
from apo_pipeline.engine.worker_group import WorkerGroup

pytestmark = pytest.mark.slow


@ray.remote
class Probe:
    def placement_group_id(self) -> str | None:
        return ray.get_runtime_context().get_placement_group_id()


def test_colocated_engines_share_the_learner_bundles(ray_session: None) -> None:
    placement = Placement(ClusterConfig(colocate=True, num_engines=2, learner_ranks=2), prefix="colocated").create()
    try:
        assert set(placement.groups) == {"learner"}, "colocated engines reserve no bundles of their own"
        learner_pg = placement.groups["learner"][0]
        gen = [placement.options("gen", i) for i in range(2)]
        assert [o["name"] for o in gen] == ["gen-0", "gen-1"] and all(o["num_cpus"] == 0 for o in gen)
        assert [o["scheduling_strategy"].placement_group_bundle_index for o in gen] == [0, 1]
        probes = [Probe.options(**{**o, "name": f"colocated-{o['name']}"}).remote() for o in gen]
        assert ray.get([p.placement_group_id.remote() for p in probes]) == [learner_pg.id.hex()] * 2
        for p in probes:
            ray.kill(p)
    finally:
        placement.remove()


def test_engines_are_named_by_role(gen_pool) -> None:
    assert [ray.get_actor(f"gen-{i}")._actor_id for i in range(2)] == [e._actor_id for e in gen_pool.engines]


GPU_CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "gpu"
LLM_JUDGE_CONFIGS = sorted(p.name for p in GPU_CONFIGS.glob("*.yaml") if read_yaml(p).get("judge", {}).get("backend") == "llm")


@ray.remote(num_cpus=0, num_gpus=1)  # as vLLM's Ray executor asks for its TP workers
def tp_worker() -> list[int]:
    return [int(g) for g in ray.get_gpu_ids()]


@ray.remote
class JudgeStandIn:
    """Takes a judge's place (same options, no vLLM). At TP 1 the judge actor holds its GPU; at
    TP > 1 it holds none and vLLM's Ray executor starts one worker (num_gpus=1) per bundle of the
    actor's placement group, which is what `tp_workers` does."""

    def __init__(self, tp: int) -> None:
        self.tp = tp

    def tp_workers(self) -> list[tuple[str, int, list[int]]]:
        """(placement group id, bundle index, GPU ids) of each GPU process of this judge."""
        pg = ray.util.get_current_placement_group()
        if self.tp == 1:
            return [(pg.id.hex(), 0, [int(g) for g in ray.get_gpu_ids()])]
        refs = [
            tp_worker.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=b)).remote()
            for b in range(self.tp)
        ]
        return [(pg.id.hex(), b, gpus) for b, gpus in enumerate(ray.get(refs))]


def gpu_config(name: str):
    path = GPU_CONFIGS / name
    return load_config(JOB_CONFIGS[read_yaml(path)["job"]], path)


def judge_gpu_report(name: str) -> dict:
    """The config's placement, a stand-in per judge with the judge pool's per-index options, and
    where their GPU processes landed; the placement is removed afterwards."""
    cl = gpu_config(name).cluster
    placement = Placement(cl, llm_judge=True, prefix=name).create(timeout_s=60)
    try:
        group = WorkerGroup(JudgeStandIn, judge_options(placement, cl.judge_engines), cl.judge_tp)
        report = {
            "names": group.names,
            "judge_groups": [pg.id.hex() for pg in placement.groups["judge"]],
            "workers": group.call("tp_workers"),
            "reserved_gpus": sum(b.get("GPU", 0) for pgs in placement.groups.values() for pg in pgs for b in pg.bundle_specs),
            "judge_engines": cl.judge_engines,
            "judge_tp": cl.judge_tp,
            "num_gpus": cl.num_gpus,
        }
        group.shutdown()
        return report
    finally:
        placement.remove()


def _in_child(names: list[str], queue: multiprocessing.Queue) -> None:
    """In a Ray of its own with logical GPUs (the session's Ray has none): every config's report."""
    try:
        gpus = max(gpu_config(name).cluster.num_gpus for name in names)
        ray.init(address="local", num_cpus=1024, num_gpus=gpus, include_dashboard=False, log_to_driver=False)
        queue.put({name: judge_gpu_report(name) for name in names})
    except BaseException:
        queue.put(traceback.format_exc())
    finally:
        ray.shutdown()


def test_gpu_configs_put_a_judge_on_every_judge_gpu() -> None:
    """Per GPU config with an llm judge (one after another, in a child process's Ray with logical
    GPUs): the placement reserves exactly the config's GPUs, judge i sits in judge placement group
    i with one GPU process on each of its bundles, and the judges use judge_engines x judge_tp
    distinct GPUs."""
    assert {"onmcpo-8b.yaml", "onmcpo-8b-colocated.yaml"} <= set(LLM_JUDGE_CONFIGS)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_in_child, args=(LLM_JUDGE_CONFIGS, queue))
    child.start()
    try:
        reports = queue.get(timeout=600)
        child.join(timeout=60)
    finally:
        if child.is_alive():
            child.terminate()
    assert isinstance(reports, dict), reports
    for name, report in reports.items():
        n, tp = report["judge_engines"], report["judge_tp"]
        assert report["names"] == [f"judge-{i}" for i in range(n)], name
        for i, workers in enumerate(report["workers"]):
            assert [(pg, b) for pg, b, _ in workers] == [(report["judge_groups"][i], b) for b in range(tp)], name
            assert all(len(gpus) == 1 for _, _, gpus in workers), name
        gpus = [g for workers in report["workers"] for _, _, ids in workers for g in ids]
        assert len(gpus) == len(set(gpus)) == n * tp, name
        assert report["reserved_gpus"] == report["num_gpus"], name
    assert reports["onmcpo-8b.yaml"]["judge_engines"] == 2  # two judges, 8 GPUs
