"""The quiet console: stage lines (plain off a TTY, one rewritten line on a TTY), progress with
rates and ETA, evaluation summaries, warnings; and the actor-log redirection it relies on."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time

import pytest

from apo_pipeline.monitoring import MetricsLogger, StageTimer, progress
from apo_pipeline.monitoring.actor_logs import ACTOR_NAME_ENV, LOG_DIR_ENV, actor_env, job_runtime_env
from apo_pipeline.monitoring.console import Console, ConsoleHandler, activate, clock, eval_summary


@pytest.fixture
def console_on():
    """Activate a console on a StringIO; yields a factory (tty, rounds, timings) -> (console, stream)."""
    made = []

    def make(tty: bool = False, rounds: int | None = 3, **timing):
        stream = io.StringIO()
        console = Console(stream, tty=tty, rounds=rounds, **timing)
        activate(console)
        made.append(console)
        return console, stream

    yield make
    activate(None)
    for console in made:
        console.shutdown()


def run_round(tmp_path, console, steps: int = 4) -> None:
    """A generate stage and a train stage of segment 1 as the pipeline runs them, then an evaluation."""
    logger = MetricsLogger(tmp_path, ray_metrics=False, trackers=[console])
    timer = StageTimer(logger)
    with timer.stage("generate", segment=1) as st:
        st["tokens"] = 1320
    with timer.stage("train", segment=1) as st:
        for n in timer.progress(range(steps), desc="train segment 1"):
            logger.log("train", step=n, segment=1, loss=0.5 - n / 100, pairs_per_s=18.4)
        st["pairs"] = 8 * steps
    logger.log("eval", iteration=1, segment=1, reward_mean=0.6612, reward_greedy=0.7931, win_rate=0.58, win_rate_greedy=0.71)
    logger.close()


def test_plain_lines_off_a_tty(tmp_path, console_on):
    console, stream = console_on(tty=False)
    run_round(tmp_path, console)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("[segment 1/3] generate  1,320 tokens  ") and " tokens/s  in " in lines[0]
    assert lines[1].startswith("[segment 1/3] train  32 pairs  ") and " pairs/s  in " in lines[1]
    assert lines[2] == "eval segment 1/3  reward 0.661 (greedy 0.793)  win-rate vs start 0.58 (greedy 0.71)"
    assert "\r" not in stream.getvalue()


def test_one_rewritten_line_on_a_tty(tmp_path, console_on):
    console, stream = console_on(tty=True)
    run_round(tmp_path, console)
    out = stream.getvalue()
    assert "\n" in out and out.count("\n") == 1  # only the evaluation is a line of its own
    frames = [f.replace("\x1b[K", "") for f in out.replace("\n", "\r").split("\r") if f.strip()]
    assert any(f.startswith("[segment 1/3] train  3/4 steps  18.4 pairs/s  loss 0.480  ETA ") for f in frames), frames
    assert "eval segment 1/3  reward 0.661" in out
    console.shutdown()
    assert stream.getvalue().endswith("\n")  # the cursor is left on a fresh line


def test_eta_of_a_stage_without_counts_comes_from_the_last_round(console_on):
    console, stream = console_on(tty=True, refresh_s=0.01)
    timer = StageTimer()
    with timer.stage("generate", segment=1):
        time.sleep(0.05)
    with timer.stage("generate", segment=2):
        time.sleep(0.05)
    assert "[segment 2/3] generate  0:00  ETA ~0:00" in stream.getvalue()


def test_long_stages_add_plain_lines_off_a_tty(console_on):
    console, stream = console_on(tty=False, refresh_s=0.01, plain_every_s=0.05)
    with StageTimer().stage("judge", iteration=2):
        time.sleep(0.3)
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 3 and all(line.startswith("[iteration 2/3] judge") for line in lines)
    assert lines[-1].endswith(" s") and "in 0." in lines[-1]


def test_progress_outside_a_stage_has_its_own_line(console_on):
    console, stream = console_on(tty=False)
    assert list(progress(range(5), "building the built-in model: supervised warm-up")) == list(range(5))
    [line] = stream.getvalue().splitlines()
    assert line.startswith("building the built-in model: supervised warm-up  5/5 steps  ") and " steps/s  " in line


def test_warnings_and_start_round(tmp_path, console_on):
    console, stream = console_on(tty=False)
    logger = logging.getLogger("apo_pipeline.test_console")
    handler = ConsoleHandler(console)
    logger.addHandler(handler)
    try:
        logger.warning("an actor died (%s); restoring", "ActorDiedError")
        logger.info("not shown")
    finally:
        logger.removeHandler(handler)
    console.log("eval", {"iteration": 0, "reward_mean": 0.5, "win_rate": 0.5}, {})
    assert stream.getvalue().splitlines() == ["warning: an actor died (ActorDiedError); restoring",
                                              "eval start  reward 0.500  win-rate vs start 0.50"]


def test_formats():
    assert clock(41) == "0:41" and clock(723) == "12:03" and clock(3723) == "1:02:03"
    assert eval_summary({"reward_mean": None, "win_rate": 0.5}, "iteration 1/2") == \
        "eval iteration 1/2  reward n/a  win-rate vs start 0.50"


def test_runtime_envs():
    assert actor_env("gen-0", DS_ACCELERATOR="cpu") == {"env_vars": {ACTOR_NAME_ENV: "gen-0", "DS_ACCELERATOR": "cpu"}}
    assert job_runtime_env(None) == {"env_vars": {"PYTHONUNBUFFERED": "1"}}
    quiet = job_runtime_env(tmp := os.path.abspath("logs"))
    assert quiet["env_vars"][LOG_DIR_ENV] == tmp
    assert quiet["worker_process_setup_hook"] == "apo_pipeline.monitoring.actor_logs.redirect_worker_output"


def test_the_setup_hook_sends_a_named_process_output_to_its_file(tmp_path):
    """What Ray runs first in an actor's process: stdout, stderr and C-level writes all land in
    <logs>/<name>.log; a process without a name is left alone."""
    code = ("import os, sys; from apo_pipeline.monitoring.actor_logs import redirect_worker_output; "
            "redirect_worker_output(); print('py out'); print('py err', file=sys.stderr); sys.stdout.flush(); "
            "os.write(2, b'fd two\\n')")
    env = dict(os.environ, **{LOG_DIR_ENV: str(tmp_path / "logs"), ACTOR_NAME_ENV: "gen-3"})
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    assert sorted((tmp_path / "logs" / "gen-3.log").read_text().splitlines()) == ["fd two", "py err", "py out"]
    env.pop(ACTOR_NAME_ENV)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout == "py out\n" and "fd two" in proc.stderr
