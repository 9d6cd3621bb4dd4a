"""The driver's liveness record and `apo-pipeline status` in every state: running, finished,
failed (with its failures), stopped (interrupted, or a driver that died without a word), not started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from apo_pipeline.cli import main
from apo_pipeline.monitoring.run_state import STALE_S, DriverRecord, read_driver_record
from apo_pipeline.monitoring.status import format_status, run_status
from apo_pipeline.storage.rundir import RunDir


def make_run(root, *, job="onmcpo", evals=(), train_steps=0, checkpoint=None, failures=()):
    """A run directory as a job leaves it: config.yaml, metrics.jsonl, LATEST + loop state, failures.jsonl."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump({"job": job, "loop": {"segments": 3}}))
    lines = [{"event": "train", "time": 1.0, "step": s, "loss": 0.5} for s in range(train_steps)]
    lines += [{"event": "eval", "time": 2.0, "iteration": i, "segment": i, **e} for i, e in enumerate(evals)]
    lines += [{"event": "stage", "time": 3.0, "stage": "train", "seconds": 1.0, "segment": 1}]
    (root / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if checkpoint:
        name, step, done = checkpoint
        (root / "checkpoints" / name).mkdir(parents=True)
        (root / "checkpoints" / name / "loop_state.json").write_text(json.dumps({"segment": done, "step": step, "round_steps": 0}))
        (root / "LATEST").write_text(name)
    if failures:
        (root / "failures.jsonl").write_text("".join(json.dumps(f) + "\n" for f in failures))
    return RunDir(root)


def record(run, **fields):
    base = {"pid": os.getpid(), "host": os.uname().nodename, "started": time.time() - 60, "heartbeat": time.time(),
            "state": "running", "ended": None, "error": None}
    run.driver_path.write_text(json.dumps({**base, **fields}))


def test_driver_record_beats_and_ends(tmp_path):
    run = RunDir(tmp_path)
    with DriverRecord(run, interval_s=0.05) as rec:
        first = read_driver_record(run)
        assert first["state"] == "running" and first["pid"] == os.getpid()
        time.sleep(0.3)
        assert read_driver_record(run)["heartbeat"] > first["heartbeat"]
        assert run_status(tmp_path)["state"] == "running"
    done = read_driver_record(run)
    assert done["state"] == "finished" and done["ended"] >= done["started"] and not rec._thread.is_alive()
    with pytest.raises(ValueError):
        with DriverRecord(run):
            raise ValueError("data.prompts: bad row\nsecond line")
    assert read_driver_record(run)["state"] == "failed" and read_driver_record(run)["error"] == "ValueError: data.prompts: bad row"
    with pytest.raises(KeyboardInterrupt):
        with DriverRecord(run):
            raise KeyboardInterrupt
    assert read_driver_record(run)["state"] == "stopped"


def test_running(tmp_path):
    run = make_run(tmp_path / "r", evals=[{"reward_mean": 0.5}], train_steps=3)
    record(run)
    st = run_status(run.root)
    assert st["state"] == "running" and st["steps"] == 3 and st["last_stage"] == "train"
    text = format_status(st)
    assert text.splitlines()[0].startswith(f"{run.root}: running (pid {os.getpid()} on ")
    assert "segment 0/3 done, 3 optimizer steps logged; no checkpoint yet; last stage train" in text


def test_a_driver_that_died_without_a_word_is_stopped(tmp_path):
    run = make_run(tmp_path / "stale")
    record(run, heartbeat=time.time() - STALE_S - 5)
    st = run_status(run.root)
    assert st["state"] == "stopped" and "ended without a word; last heartbeat" in st["reason"]
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record(run, pid=int(gone.stdout))  # fresh heartbeat, but the process is gone (SIGKILL right after a beat)
    assert run_status(run.root)["state"] == "stopped"


def test_finished_with_checkpoint_and_eval_trend(tmp_path, capsys):
    evals = [{"reward_mean": 0.588 + 0.01 * i, "reward_greedy": 0.57, "win_rate": 0.5, "win_rate_greedy": 0.5} for i in range(8)]
    run = make_run(tmp_path / "done", evals=evals, train_steps=150, checkpoint=("segment_0003", 150, 3))
    record(run, state="finished", ended=time.time())
    assert main(["status", str(run.root)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith(f"{run.root}: finished (") and len(lines) == 7
    assert "segment 3/3 done, 150 optimizer steps logged; last checkpoint segment_0003 (next step 150)" in lines[1]
    assert lines[2] == "  reward          0.588 -> 0.598 -> ... -> 0.638 -> 0.648 -> 0.658"
    assert lines[-1] == "  failures        none"
    assert main(["status", str(run.root), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["state"] == "finished" and st["checkpoint"]["name"] == "segment_0003" and len(st["evals"]) == 8


def test_failed_shows_why_and_the_failures(tmp_path):
    fails = [{"time": 1.0, "attempt": 0, "error": "ActorDiedError", "message": "The actor died unexpectedly\nmore"},
             {"time": 2.0, "attempt": 1, "error": "ActorDiedError", "message": "learner-0 died again"}]
    run = make_run(tmp_path / "failed", failures=fails)
    record(run, state="failed", ended=time.time(), error="ActorDiedError: learner-0 died again")
    st = run_status(run.root)
    assert st["state"] == "failed" and st["reason"] == "ActorDiedError: learner-0 died again"
    text = format_status(st)
    assert ": failed (" in text.splitlines()[0] and text.splitlines()[0].endswith("ActorDiedError: learner-0 died again")
    assert text.splitlines()[-1] == "  failures        2 in failures.jsonl; last (attempt 1): ActorDiedError: learner-0 died again"


def test_not_started_and_missing(tmp_path, capsys):
    assert run_status(tmp_path)["state"] == "not started"
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"status: {tmp_path / 'nope'}: no such run directory\n"
