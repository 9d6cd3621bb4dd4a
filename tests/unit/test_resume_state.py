"""Pure parts of resume and recovery: where a run restarts, the metrics log cut back to a
checkpoint, the loop state's new fields, and the bounded job-restore loop."""

from __future__ import annotations

import json

import pytest
from ray.exceptions import ActorDiedError

from apo_pipeline.config import OnMCPOConfig
from apo_pipeline.loops.recovery import run_with_recovery
from apo_pipeline.loops.resume import ResumePoint
from apo_pipeline.monitoring.metrics import MetricsLogger, read_metrics
from apo_pipeline.storage import CheckpointError, LoopState


def test_resume_point_counts_steps_only_in_the_round_it_stopped_in():
    assert ResumePoint().fresh and not ResumePoint(0, 3, 3).fresh and not ResumePoint(1, 10).fresh
    at = ResumePoint(done=1, step=12, round_steps=2)
    assert [at.steps_done_in(i) for i in (1, 2, 3)] == [0, 2, 0]


def test_rewind_moves_later_lines_aside(tmp_path):
    with MetricsLogger(tmp_path, ray_metrics=False) as log:
        for step in range(5):
            log.log("train", step=step)
        kept = log.lines
        assert kept == 5
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"event": "train", "step": 5}\n{"event": "tr')  # a run killed mid-write
    with MetricsLogger(tmp_path, ray_metrics=False) as log:
        assert log.lines == 7  # the torn line was ended, so nothing merges into it
        assert log.rewind(3) == 4
        log.log("resume", step=3)
        assert log.lines == 4
    assert [(e["event"], e["step"]) for e in read_metrics(tmp_path)] == [("train", 0), ("train", 1), ("train", 2), ("resume", 3)]
    discarded = (tmp_path / "metrics.discarded.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in discarded[:3]] == [3, 4, 5] and discarded[3] == '{"event": "tr'


def test_rewind_keeps_what_this_logger_wrote(tmp_path):
    with MetricsLogger(tmp_path, ray_metrics=False) as log:
        log.log("eval", iteration=0)  # an attempt that died before its first checkpoint
    with MetricsLogger(tmp_path, ray_metrics=False) as log:
        log.log("data", skipped=2)  # written by the new attempt before it looks for a checkpoint
        assert log.rewind(0) == 1
        log.log("eval", iteration=0)
    assert [e["event"] for e in read_metrics(tmp_path)] == ["data", "eval"]
    assert json.loads((tmp_path / "metrics.discarded.jsonl").read_text())["iteration"] == 0


def test_rewind_past_the_end_keeps_everything(tmp_path):
    with MetricsLogger(tmp_path, ray_metrics=False) as log:
        log.log("train", step=0)
        assert log.rewind(10) == 0 and log.lines == 1
    assert not (tmp_path / "metrics.discarded.jsonl").exists()


def test_loop_state_round_steps_and_metrics_lines_round_trip():
    state = LoopState(iteration=2, step=40, round_steps=3, metrics_lines=120)
    assert LoopState.from_json(state.to_json()) == state
    with pytest.raises(CheckpointError, match="'round_steps' has type str"):
        LoopState.from_json(json.dumps({"round_steps": "3"}))


def _cfg(restores: int) -> OnMCPOConfig:
    return OnMCPOConfig.model_validate({"fault": {"job_restores": restores}})


def test_recovery_reruns_the_loop_after_an_actor_death(tmp_path):
    calls = []

    def loop(cfg, run_dir):
        calls.append(run_dir)
        if len(calls) < 3:
            raise ActorDiedError()
        return run_dir / "final"

    assert run_with_recovery(loop, _cfg(2), tmp_path) == tmp_path / "final"
    assert len(calls) == 3
    failures = [json.loads(line) for line in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert [(f["attempt"], f["error"]) for f in failures] == [(0, "ActorDiedError"), (1, "ActorDiedError")]


def test_recovery_is_bounded_and_other_errors_pass_through(tmp_path):
    def dies(cfg, run_dir):
        raise ActorDiedError()

    with pytest.raises(ActorDiedError):
        run_with_recovery(dies, _cfg(1), tmp_path)
    assert len((tmp_path / "failures.jsonl").read_text().splitlines()) == 2

    calls = []

    def bug(cfg, run_dir):
        calls.append(1)
        raise ValueError("a bug is not retried")

    with pytest.raises(ValueError):
        run_with_recovery(bug, _cfg(3), tmp_path / "other")
    assert calls == [1]
