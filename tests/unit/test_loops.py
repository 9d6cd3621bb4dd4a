"""The three loops driven against a recording fake of the pipeline's actor stages (no Ray, ms).

The fake stands in for the actors only (generation, judge, learner, sync, evaluation, checkpoint
writes); the round log and the round store are the real ones on a temporary run directory, so
stored tables, reused rounds and metrics events are the loops' own. The real jobs run in
tests/integration/test_jobs.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from apo_pipeline.config import APOConfig, MCPOConfig, OnMCPOConfig, load_config
from apo_pipeline.loops import apo, mcpo, onmcpo
from apo_pipeline.loops.pipeline import Pipeline, Prompts
from apo_pipeline.loops.resume import ResumePoint
from apo_pipeline.loops.round_log import RoundLog
from apo_pipeline.loops.round_store import RoundStore
from apo_pipeline.monitoring import MetricsLogger, StageTimer, read_metrics
from apo_pipeline.ranking import PromptRanking
from apo_pipeline.rollout import Candidate, Rollout, TrainGroup
from apo_pipeline.storage import create_run_dir

PROMPTS = 8


class FakeLearner:
    def __init__(self, calls: list[tuple]) -> None:
        self.calls = calls

    def __getattr__(self, name: str) -> Any:  # snapshot_weights, new_iteration, extrapolate, keep_weights
        return lambda *args, **kwargs: self.calls.append((f"learner.{name}", *args))


class FakePipeline:
    """`Pipeline`'s stage interface, recording (stage, round, ...) for each call. `at`: where
    `resume` says the run goes on."""

    batch_size = 2

    def __init__(self, cfg: Any, run_dir: Path, unit: str, *, at: ResumePoint) -> None:
        self.cfg, self.unit, self.at, self.calls = cfg, unit, at, []
        self.run_dir = create_run_dir(run_dir.parent, run_dir.name, cfg)
        self.metrics = MetricsLogger(self.run_dir.root, ray_metrics=False)
        self.rounds = RoundLog(self.metrics, StageTimer(self.metrics, progress=False), unit)
        self.store = RoundStore(self.run_dir, self.rounds, cfg.checkpoint)
        self.prompts = Prompts([f"prompt {i}" for i in range(PROMPTS)], ["held out"])
        self.learner = FakeLearner(self.calls)

    def __enter__(self) -> FakePipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.calls.append(("shutdown",))
        self.metrics.close()

    should_evaluate = Pipeline.should_evaluate

    def resume(self) -> ResumePoint:
        return self.at

    def evaluate(self, index: int, policy: str | None = None) -> dict[str, Any]:
        self.calls.append(("evaluate", index, policy))
        return {"iteration": index, **({"policy": policy} if policy else {})}

    def keep_reference(self) -> None:
        self.calls.append(("keep_reference",))

    def generate(self, prompts: list[Any], index: int, **_: Any) -> list[Rollout]:
        self.calls.append(("generate", index, len(prompts)))
        return [Rollout(p, [n, 1], [Candidate([n, k], f"c{k}", "stop", -1.0, 1.0) for k in range(3)], n)
                for n, p in enumerate(prompts)]

    def rank(self, rollouts: list[Rollout], index: int, chunk: int | None = None) -> list[PromptRanking]:
        self.calls.append(("rank", index))
        return [PromptRanking(winner=1) for _ in rollouts]

    def reference_of(self, built: Any, rollouts: list[Rollout], index: int, weights: str | None = None) -> list[TrainGroup]:
        self.calls.append(("reference", index, weights))
        return self.reference_logps(built.groups, index)

    def reference_logps(self, groups: list[TrainGroup], index: int) -> list[TrainGroup]:
        for group in groups:
            group.ref_logps = [-1.0] * len(group.candidate_ids)
        return groups

    def train(self, groups: list[TrainGroup], steps: int, index: int, step: int, done_steps: int = 0) -> int:
        self.calls.append(("train", index, step, done_steps, steps))
        return step - done_steps + steps

    def sync(self, index: int) -> None:
        self.calls.append(("sync", index))

    def checkpoint(self, done: int, step: int, round_steps: int = 0) -> None:
        self.calls.append(("checkpoint", done, step))

    def export_final(self, weights: str | None = None) -> Path:
        self.calls.append(("export", weights))
        return self.run_dir.final_dir


def drive(loop: Any, cfg: Any, tmp_path: Path, at: ResumePoint = ResumePoint()) -> tuple[list[tuple], Path]:
    """Run `loop.run` on a FakePipeline; the calls it recorded and the run directory."""
    made: list[FakePipeline] = []

    def build(*args: Any, **kwargs: Any) -> FakePipeline:
        made.append(FakePipeline(*args, **kwargs, at=at))
        return made[0]

    loop.run(cfg, tmp_path / "run", build=build)
    return made[0].calls, tmp_path / "run"


def stages(calls: list[tuple], index: int) -> list[str]:
    """The stage names recorded for round `index` (calls whose second item is the round)."""
    return [c[0] for c in calls if len(c) > 1 and c[1] == index]


def onmcpo_cfg(*overrides: str) -> OnMCPOConfig:
    return load_config(OnMCPOConfig, None, ["loop.segments=2", "loop.total_steps=6", "eval.every=1", *overrides])


def test_onmcpo_runs_each_segment_in_the_papers_order(tmp_path) -> None:
    calls, run = drive(onmcpo, onmcpo_cfg(), tmp_path)
    assert calls[:3] == [("learner.new_iteration", 6), ("evaluate", 0, None), ("keep_reference",)]  # one LR schedule
    for s in (1, 2):
        assert stages(calls, s) == ["generate", "rank", "reference", "train", "sync", "evaluate", "checkpoint"]
    assert [c for c in calls if c[0] == "train"] == [("train", 1, 0, 0, 3), ("train", 2, 3, 0, 3)]
    assert ("reference", 1, "reference") in calls  # pi_ref: the kept starting policy
    assert calls[-2:] == [("export", None), ("shutdown",)]
    data = read_metrics(run, "data")
    assert [(e["segment"], e["prompts"]) for e in data] == [(1, 4), (2, 4)]
    assert (run / "seg_0002" / "pairs.parquet").is_file()


def test_onmcpo_resumes_mid_segment_and_reuses_its_stored_data(tmp_path) -> None:
    drive(onmcpo, onmcpo_cfg(), tmp_path)  # a first attempt wrote both segments' tables
    calls, run = drive(onmcpo, onmcpo_cfg(), tmp_path, at=ResumePoint(done=1, step=4, round_steps=1))
    assert stages(calls, 1) == []
    assert stages(calls, 2) == ["train", "sync", "evaluate", "checkpoint"]
    assert ("train", 2, 4, 1, 3) in calls and ("checkpoint", 2, 6) in calls
    assert ("keep_reference",) not in calls and ("evaluate", 0, None) not in calls
    assert not [c for c in calls if c[0] == "learner.new_iteration"]  # the checkpoint restored the schedule
    reused = read_metrics(run, "data")[-1]
    assert (reused["segment"], reused["reused"], reused["pairs"]) == (2, "seg_0002/pairs.parquet", 4)


def test_onmcpo_steps_default_to_one_pass_over_the_prompts(tmp_path) -> None:
    """loop.total_steps unset: prompts / effective batch (8 / 2), split over the segments."""
    calls, _ = drive(onmcpo, load_config(OnMCPOConfig, None, ["loop.segments=2"]), tmp_path)
    assert calls[0] == ("learner.new_iteration", 4)
    assert [c for c in calls if c[0] == "train"] == [("train", 1, 0, 0, 2), ("train", 2, 2, 0, 2)]


def test_onmcpo_round_reference_is_each_segments_start(tmp_path) -> None:
    calls, _ = drive(onmcpo, onmcpo_cfg("algorithm.reference=round"), tmp_path)
    assert ("keep_reference",) not in calls and ("reference", 1, None) in calls


def apo_cfg(*overrides: str) -> APOConfig:
    return load_config(APOConfig, None, ["loop.iterations=2", "loop.epochs=2", "eval.every=1", *overrides])


def test_apo_evaluates_hat_then_extrapolated_each_iteration(tmp_path) -> None:
    calls, run = drive(apo, apo_cfg("loop.alpha=0.3"), tmp_path)
    assert calls[:2] == [("evaluate", 0, "hat"), ("learner.snapshot_weights",)]
    for t in (1, 2):
        assert stages(calls, t) == ["generate", "rank", "reference", "train", "sync", "evaluate", "sync", "evaluate",
                                    "checkpoint"]
        assert [c[2] for c in calls if c[:2] == ("evaluate", t)] == ["hat", "extrapolated"]
    # a fresh optimizer and schedule per iteration: E epochs over 4 pairs in batches of 2
    assert [c for c in calls if c[0].startswith("learner.") and c[0] != "learner.snapshot_weights"] == [
        ("learner.new_iteration", 4), ("learner.extrapolate", 0.3)] * 2
    assert calls[-2:] == [("export", "thetahat"), ("shutdown",)]
    start = read_metrics(run, "eval")
    assert start == [{**start[0], "iteration": 0, "policy": "extrapolated", "same_as": "hat"}]


def test_apo_alpha_zero_evaluates_once_under_both_names(tmp_path) -> None:
    calls, run = drive(apo, apo_cfg("loop.alpha=0"), tmp_path)
    assert stages(calls, 1) == ["generate", "rank", "reference", "train", "sync", "evaluate", "checkpoint"]
    assert [e["policy"] for e in read_metrics(run, "eval")] == ["extrapolated", "hat", "hat"]


def test_apo_resumed_mid_iteration_keeps_the_restored_schedule(tmp_path) -> None:
    drive(apo, apo_cfg(), tmp_path)
    calls, _ = drive(apo, apo_cfg(), tmp_path, at=ResumePoint(done=1, step=6, round_steps=2))
    assert stages(calls, 1) == []
    assert stages(calls, 2) == ["train", "sync", "evaluate", "sync", "evaluate", "checkpoint"]
    assert ("train", 2, 6, 2, 4) in calls
    assert not [c for c in calls if c[0] in ("learner.new_iteration", "learner.snapshot_weights")]


def mcpo_cfg(*overrides: str) -> MCPOConfig:
    return load_config(MCPOConfig, None, ["loop.epochs=3", "loop.builtin_prompts=4", "eval.every=1", *overrides])


def test_mcpo_builds_its_dataset_once_and_trains_each_epoch(tmp_path) -> None:
    calls, run = drive(mcpo, mcpo_cfg(), tmp_path)
    assert stages(calls, 0) == ["evaluate", "generate", "rank"]
    for epoch in (1, 2, 3):
        assert stages(calls, epoch) == ["train", "sync", "evaluate", "checkpoint"]
    # one LR schedule over every epoch: 4 groups in batches of 2, 3 epochs; the optimizer is kept
    assert ("learner.new_iteration", 6) in calls
    assert [c[2] for c in calls if c[0] == "train"] == [0, 2, 4]
    assert sorted(p.name for p in (run / "iter_0000").iterdir()) == ["judgements.parquet", "pairs.parquet",
                                                                     "rollouts.parquet"]


def test_mcpo_resumed_skips_finished_epochs_and_reuses_the_dataset(tmp_path) -> None:
    drive(mcpo, mcpo_cfg(), tmp_path)
    calls, _ = drive(mcpo, mcpo_cfg(), tmp_path, at=ResumePoint(done=1, step=3, round_steps=1))
    assert stages(calls, 0) == [] and stages(calls, 1) == []
    assert [c for c in calls if c[0] == "train"] == [("train", 2, 3, 1, 2), ("train", 3, 4, 0, 2)]
    assert not [c for c in calls if c[0] == "learner.new_iteration"]


@pytest.mark.parametrize("loop,cfg", [(onmcpo, onmcpo_cfg), (apo, apo_cfg), (mcpo, mcpo_cfg)])
def test_a_failing_stage_still_shuts_the_actors_down(loop, cfg, tmp_path, monkeypatch) -> None:
    def broken(self, *args: Any, **kwargs: Any) -> int:
        raise RuntimeError("learner died")

    monkeypatch.setattr(FakePipeline, "train", broken)
    made: list[FakePipeline] = []

    def build(*args: Any, **kwargs: Any) -> FakePipeline:
        made.append(FakePipeline(*args, **kwargs, at=ResumePoint()))
        return made[0]

    with pytest.raises(RuntimeError, match="learner died"):
        loop.run(cfg(), tmp_path / "run", build=build)
    assert made[0].calls[-1] == ("shutdown",)
