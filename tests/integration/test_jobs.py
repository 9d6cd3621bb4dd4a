"""The jobs end to end, as a user runs them: real Ray, vLLM engines and DeepSpeed ranks on the tiny model.

OnMC-PO goes through `ray job submit` to a head this test starts; APO and MC-PO run as
`python jobs/<job>.py --preset smoke`. Each checks the run directory's contract: metrics.jsonl
events, Parquet tables readable with `datasets`, and `final/` loadable with `from_pretrained`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def events(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(job: str, run_dir: Path, *overrides: str, timeout: int = 420) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "jobs" / f"{job}.py"), "--preset", "smoke", "--run-dir", str(run_dir), *overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def check_run_contract(run_dir: Path, unit: str, rounds: int) -> None:
    import datasets
    from transformers import AutoModelForCausalLM

    evals = events(run_dir, "eval")
    assert [e["iteration"] for e in evals] == list(range(rounds + 1))
    assert all(isinstance(e["reward_mean"], float) and 0.0 <= e["win_rate"] <= 1.0 for e in evals)
    train = events(run_dir, "train")
    assert train and all(e["loss"] == e["loss"] for e in train)
    assert [e["step"] for e in train] == list(range(len(train)))
    stages = {e["stage"] for e in events(run_dir, "stage")}
    assert {"generate", "judge", "ref_logprobs", "train", "sync", "eval"} <= stages
    prefix = "seg" if unit == "segment" else "iter"
    files = sorted(str(p) for p in run_dir.glob(f"{prefix}_*/pairs.parquet"))
    assert files, f"no pairs tables in {run_dir}"
    pairs = datasets.load_dataset("parquet", data_files=files, split="train")
    assert len(pairs) > 0 and all(len(r) == len(c) for r, c in zip(pairs["ref_logps"], pairs["candidate_ids"]))
    model = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    assert model.config.model_type == "qwen2"
    assert (run_dir / "config.yaml").is_file()


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head on loopback with the dashboard / job server and token auth (cpu-stack.md).

    `ray start --block` runs in its own process group, which is ended afterwards: only this head's
    processes stop (never `ray stop`, which would end every Ray on the machine).
    """
    port, dash = free_port(), free_port()
    # As after `source .venv/bin/activate`: the job's `python` is the venv's.
    env = dict(os.environ, RAY_AUTH_MODE="token", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], check=True, env=env, capture_output=True, timeout=60)
    log = open(tmp_path / "ray-head.log", "w")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", "--num-cpus=8", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        yield f"http://127.0.0.1:{dash}", env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        log.close()


def submit_when_ready(cmd: list[str], env: dict, deadline_s: float) -> subprocess.CompletedProcess:
    """`ray job submit`, retried while the head's dashboard agent is still starting."""
    start = time.time()
    while True:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=deadline_s)
        starting = "No available agent" in proc.stdout + proc.stderr or "Connection refused" in proc.stderr
        if proc.returncode == 0 or not starting or time.time() - start > 240:
            return proc
        time.sleep(3)


def test_onmcpo_through_ray_job_submit(ray_head, tmp_path):
    address, env = ray_head
    run_dir = tmp_path / "onmcpo"
    runtime_env = {"excludes": [".venv", ".cache", "runs", ".git"], "env_vars": {"APO_CACHE_DIR": str(REPO / ".cache" / "apo-pipeline")}}
    submit = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
              "--runtime-env-json", json.dumps(runtime_env), "--",
              "python", "jobs/onmcpo.py", "--preset", "smoke", "--run-dir", str(run_dir)]
    proc = submit_when_ready(submit, env, deadline_s=600)
    assert proc.returncode == 0 and "succeeded" in proc.stdout, proc.stdout[-6000:] + proc.stderr[-3000:]
    check_run_contract(run_dir, "segment", rounds=2)


def test_apo_smoke_and_report(tmp_path):
    run_dir = tmp_path / "apo"
    run_job("apo", run_dir)
    check_run_contract(run_dir, "iteration", rounds=2)
    proc = subprocess.run([str(BIN / "apo-pipeline"), "report", str(run_dir)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    written = [Path(line) for line in proc.stdout.split()]
    assert any(p.suffix == ".png" for p in written) and any(p.name == "report.md" for p in written)
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)


def test_mcpo_smoke_with_random_negatives(tmp_path):
    run_dir = tmp_path / "mcpo"
    run_job("mcpo", run_dir, "algorithm.loss=rnce", "algorithm.num_negatives=2", "algorithm.negatives=random")
    check_run_contract(run_dir, "iteration", rounds=1)


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "final" / "model.safetensors")


def test_apo_killed_after_a_checkpoint_resumes_with_the_same_command(tmp_path):
    """SIGKILL the driver once iteration 1 is checkpointed; the same command finishes the run, and
    ends with the weights and evaluations of a run that was never stopped."""
    run_dir = tmp_path / "apo"
    cmd = [sys.executable, str(REPO / "jobs" / "apo.py"), "--preset", "smoke", "--run-dir", str(run_dir)]
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 400
    while not (run_dir / "LATEST").is_file() and first.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    log.close()
    assert (run_dir / "LATEST").read_text().strip() == "iteration_0001", (tmp_path / "first.log").read_text()[-3000:]
    assert not (run_dir / "final").exists()
    run_job("apo", run_dir)
    resumed = events(run_dir, "resume")
    assert [(e["iteration"], e["step"]) for e in resumed] == [(1, resumed[0]["step"])] and resumed[0]["step"] > 0
    generated = [e["iteration"] for e in events(run_dir, "stage") if e["stage"] == "generate"]
    assert generated.count(1) == 1 and generated.count(2) >= 1  # the kill may land inside iteration 2
    assert [e["iteration"] for e in events(run_dir, "eval")] == [0, 1, 2]
    assert (run_dir / "LATEST").read_text().strip() == "iteration_0002"
    check_run_contract(run_dir, "iteration", rounds=2)
    straight = tmp_path / "straight"
    run_job("apo", straight)
    resumed_w, straight_w = final_weights(run_dir), final_weights(straight)
    assert resumed_w.keys() == straight_w.keys()
    assert max(float((resumed_w[k] - straight_w[k]).abs().max()) for k in resumed_w) <= 1e-6
    rewards = [[e["reward_mean"] for e in events(d, "eval")] for d in (run_dir, straight)]
    assert rewards[0] == rewards[1]
