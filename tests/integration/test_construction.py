"""A learner rank dies while the pipeline is being built: everything built so far (placement groups,
generation engine, judge, the other ranks) is released, and the job restore (loops/recovery.py)
builds the pipeline again under the same names and finishes the run. Without the release, the
second build fails at once: `gen-0` and the placement groups would still exist.

The kill is deterministic: the driver (this file's DRIVER script, the real `run_job`) SIGKILLs
learner rank 0 after the ranks exist and before their rendezvous is called, so the construction
sees the death whatever the machine's speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

DRIVER = """
import os, signal, sys
import ray
from apo_pipeline.engine.learner_group import LearnerGroup
from apo_pipeline.launch import run_job

killed_file, argv = sys.argv[1], sys.argv[2:]
real_rendezvous = LearnerGroup._rendezvous

def rendezvous_of_a_dead_rank(self, use_gpu):
    if not os.path.exists(killed_file):  # the first build only
        pid = ray.get(self.ranks[0].__ray_call__.remote(lambda actor: os.getpid()))
        os.kill(pid, signal.SIGKILL)
        with open(killed_file, "w") as f:
            f.write(str(pid))
    return real_rendezvous(self, use_gpu)

LearnerGroup._rendezvous = rendezvous_of_a_dead_rank
sys.exit(run_job("onmcpo", argv))
"""

SMALL = ("loop.segments=1", "loop.total_steps=2", "data.num_prompts=8", "data.num_eval_prompts=4", "eval.greedy=false")


def test_a_learner_rank_killed_during_construction_is_restored(tmp_path, tiny_model_dir):
    run_dir, killed = tmp_path / "run", tmp_path / "killed-pid"
    cmd = [sys.executable, "-c", DRIVER, str(killed), "--preset", "smoke", "--run-dir", str(run_dir),
           f"model.path={tiny_model_dir}", *SMALL]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen_running = False
    while proc.poll() is None:  # meanwhile `status` sees a live driver
        if (run_dir / "driver.json").is_file() and not seen_running:
            status = subprocess.run([str(BIN / "apo-pipeline"), "status", "--json", str(run_dir)],
                                    capture_output=True, text=True, timeout=60)
            seen_running = json.loads(status.stdout)["state"] == "running"
        time.sleep(1)
    terminal = proc.stdout.read()
    assert proc.returncode == 0, terminal + (run_dir / "logs" / "driver.log").read_text()[-6000:]
    assert seen_running

    failures = [json.loads(line) for line in (run_dir / "failures.jsonl").read_text().splitlines()]
    assert [f["attempt"] for f in failures] == [0] and "Actor" in failures[0]["error"]
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    actors = [e for e in events if e["event"] == "actors"]
    assert len(actors) == 1 and actors[0]["learner-0"] != int(killed.read_text())  # the first build never finished
    assert [e["iteration"] for e in events if e["event"] == "eval"] == [0, 1]
    assert (run_dir / "final" / "model.safetensors").is_file()
    assert "warning: an actor died" in terminal and "restoring every actor from the last checkpoint" in terminal
    assert json.loads(subprocess.run([str(BIN / "apo-pipeline"), "status", "--json", str(run_dir)],
                                     capture_output=True, text=True, timeout=60).stdout)["state"] == "finished"
