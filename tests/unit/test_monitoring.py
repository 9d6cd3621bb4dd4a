"""MetricsLogger (jsonl, TensorBoard, Ray metrics) and StageTimer; W&B is in test_trackers.py."""

from __future__ import annotations

import json
import logging
import sys
import time

import numpy as np
import pytest
import torch

from apo_pipeline.monitoring import STAGES, MetricsLogger, StageTimer, progress, read_metrics


def _lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_log_appends_flushed_json_lines(tmp_path):
    logger = MetricsLogger(tmp_path, ray_metrics=False)
    t0 = time.time()
    logger.log("train", step=1, loss=np.float32(0.5), accuracy=torch.tensor(0.75), lr=1e-5)
    assert len(_lines(tmp_path)) == 1  # flushed before close
    logger.log("eval", iteration=0, reward_mean=float("nan"), win_rate=0.5, path=tmp_path, counts=np.arange(2))
    logger.close()
    logger.close()
    with pytest.raises(RuntimeError, match="closed"):
        logger.log("eval", iteration=1)
    train, evl = _lines(tmp_path)
    assert train["event"] == "train" and t0 <= train["time"] <= time.time()
    assert train["loss"] == 0.5 and train["accuracy"] == 0.75 and train["step"] == 1
    assert evl["reward_mean"] is None and evl["path"] == str(tmp_path) and evl["counts"] == [0, 1]
    with MetricsLogger(tmp_path, ray_metrics=False) as again:  # appends, never truncates
        again.log("judge", asked=4, scored=4, failed=0, retried=0, ties=1)
    assert [e["event"] for e in _lines(tmp_path)] == ["train", "eval", "judge"]


def test_read_metrics_filters_and_tolerates_a_torn_last_line(tmp_path, caplog):
    with MetricsLogger(tmp_path, ray_metrics=False) as logger:
        logger.log("train", step=1, loss=1.0)
        logger.log("eval", iteration=0, reward_mean=0.1, win_rate=0.5)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('garbage\n{"no_event": 1}\n{"event": "train", "st')
    with caplog.at_level(logging.WARNING):
        events = read_metrics(tmp_path)
    assert [e["event"] for e in events] == ["train", "eval"]
    assert read_metrics(tmp_path / "metrics.jsonl", event="eval")[0]["reward_mean"] == 0.1
    assert "line 3: not JSON" in caplog.text and "line 4: no 'event'" in caplog.text and "line 5" not in caplog.text


def test_tensorboard_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(RuntimeError, match=r"monitoring\.tensorboard=true needs the tensorboard package"):
        MetricsLogger(tmp_path, ray_metrics=False, tensorboard=True)


def test_tensorboard_scalars(tmp_path):
    """The real tensorboard package: its own event reader finds every scalar at its step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path, ray_metrics=False, tensorboard=True) as logger:
        logger.log("train", step=7, loss=0.25, note="text")
        logger.log("stage", stage="generate", seconds=1.5, iteration=2)
        logger.log("judge", asked=3)
        logger.log("judge", asked=5)
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert scalars == {"train/loss": [(7, 0.25)], "stage/generate/seconds": [(2, 1.5)], "judge/asked": [(0, 3.0), (1, 5.0)]}


@pytest.fixture
def no_ray():
    """No Ray in this process (a session-wide Ray of the integration tests may still be up)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    return ray


def test_ray_metrics_skipped_without_ray(tmp_path, no_ray):
    assert not no_ray.is_initialized()
    with MetricsLogger(tmp_path, ray_metrics=True) as logger:
        logger.log("train", step=1, loss=0.1)
        assert logger.trackers[0].metrics == {}




def test_stage_timer_logs_and_breaks_down(tmp_path):
    logger = MetricsLogger(tmp_path, ray_metrics=False)
    timer = StageTimer(logger, progress=False)
    with timer.stage("generate", iteration=3) as st:
        time.sleep(0.02)
        st["tokens"] = 100
    with timer.stage("generate", iteration=4):
        pass
    with pytest.raises(ZeroDivisionError):
        with timer.stage("train", iteration=4, pairs=8):
            1 / 0

    @timer.stage("sync", iteration=4)
    def sync() -> str:
        return "done"

    assert sync() == "done" and sync() == "done"
    logger.close()
    events = read_metrics(tmp_path, event="stage")
    assert [e["stage"] for e in events] == ["generate", "generate", "train", "sync", "sync"]
    gen = events[0]
    assert gen["iteration"] == 3 and gen["seconds"] >= 0.02 and gen["tokens"] == 100
    assert gen["tokens_per_s"] == pytest.approx(100 / gen["seconds"])
    assert events[2]["error"] == "ZeroDivisionError" and "pairs_per_s" in events[2]
    breakdown = timer.breakdown()
    assert list(breakdown) == ["generate", "train", "sync"]
    assert breakdown["generate"] == pytest.approx(events[0]["seconds"] + events[1]["seconds"])


def test_stage_names_are_checked():
    with pytest.raises(ValueError, match="stage: expected one of generate"):
        with StageTimer().stage("generation"):
            pass
    assert STAGES == ("generate", "judge", "ref_logprobs", "train", "sync", "checkpoint", "eval")


def test_progress_passes_items_through(capsys):
    assert list(progress(range(3), "gen")) == [0, 1, 2]
    assert list(StageTimer(progress=False).progress(iter("ab"), "judge", total=2)) == ["a", "b"]
    assert capsys.readouterr().err == ""  # not a TTY under pytest: no bar


def _progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "apo_pipeline.monitoring.stages"]


def test_progress_without_a_tty_logs_every_tenth(caplog):
    caplog.set_level(logging.INFO, logger="apo_pipeline.monitoring.stages")
    items = iter(progress(list(range(50)), "train segment 1"))
    assert [next(items) for _ in range(5)] == [0, 1, 2, 3, 4]
    assert _progress_lines(caplog) == []  # item 5 is still being worked on
    assert list(items) == list(range(5, 50))
    assert _progress_lines(caplog) == [f"train segment 1: {n}/50 steps ({2 * n}%)" for n in range(5, 51, 5)]


def test_progress_logs_the_end_and_respects_the_switch(caplog):
    caplog.set_level(logging.INFO, logger="apo_pipeline.monitoring.stages")
    assert list(progress(range(15), "train iteration 2", unit="batches")) == list(range(15))
    lines = _progress_lines(caplog)
    assert lines[0] == "train iteration 2: 2/15 batches (13%)" and len(lines) == 8
    assert lines[-1] == "train iteration 2: 15/15 batches (100%)"
    caplog.clear()
    assert list(progress((i for i in range(3)), "judge")) == [0, 1, 2]  # no total: only the end
    assert _progress_lines(caplog) == ["judge: 3 steps"]
    caplog.clear()
    assert list(StageTimer(progress=False).progress(range(20), "train segment 1")) == list(range(20))
    assert list(progress(range(20), "x", enabled=False)) == list(range(20))
    assert _progress_lines(caplog) == []


def test_progress_on_a_tty_is_a_bar_not_log_lines(capsys, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="apo_pipeline.monitoring.stages")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert list(progress(range(20), "train segment 3")) == list(range(20))
    assert "train segment 3" in capsys.readouterr().err and _progress_lines(caplog) == []
