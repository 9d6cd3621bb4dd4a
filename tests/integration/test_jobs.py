"""The jobs end to end, as a user runs them: real Ray, vLLM engines and DeepSpeed ranks on the tiny model.

OnMC-PO goes through `ray job submit` to a head this test starts; APO and MC-PO run as
`python jobs/<job>.py --preset smoke`. Each checks the run directory's contract: metrics.jsonl
events, Parquet tables readable with `datasets`, and `final/` loadable with `from_pretrained`.
"""

from __future__ import annotations

import json
import os
import re
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
VLLM_INFO = re.compile(r"INFO \d\d-\d\d \d\d:\d\d:\d\d \[")  # vLLM's log lines: "INFO 12-02 04:06:31 [core.py:133] ..."


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
    for policy in {e.get("policy") for e in evals}:  # APO evaluates two policies per iteration
        assert [e["iteration"] for e in evals if e.get("policy") == policy] == list(range(rounds + 1))
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
    port, dash, agent = free_port(), free_port(), free_port()
    # As after `source .venv/bin/activate`: the job's `python` is the venv's.
    env = dict(os.environ, RAY_AUTH_MODE="token", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], check=True, env=env, capture_output=True, timeout=60)
    log = open(tmp_path / "ray-head.log", "w")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", "--num-cpus=8", "--disable-usage-stats",
         # The session's own Ray (other tests) holds the agent's default port 52365: without a
         # port of its own this head's agent cannot serve the job API for minutes.
         f"--dashboard-agent-listen-port={agent}"],
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


# Three optimizer steps per APO iteration and a checkpoint after each: the resume test kills inside
# iterations, and the report test reads the same run.
APO_OVERRIDES = ("loop.epochs=3", "checkpoint.every_steps=1")


@pytest.fixture(scope="module")
def apo_straight(tmp_path_factory) -> Path:
    """An APO smoke run that is never stopped."""
    run_dir = tmp_path_factory.mktemp("straight") / "apo"
    proc = run_job("apo", run_dir, *APO_OVERRIDES)
    (run_dir.parent / "terminal.txt").write_text(proc.stdout + proc.stderr)
    return run_dir


def test_apo_smoke_and_report(apo_straight):
    """Both APO policies are evaluated every iteration, final/ is pihat_{T+1} (not the extrapolated
    theta_{T+1} that the last checkpoint trains on), and the dynamics probe measures G against the
    evaluations' greedy responses."""
    run_dir = apo_straight
    check_run_contract(run_dir, "iteration", rounds=2)
    evals = events(run_dir, "eval")
    assert [(e["iteration"], e["policy"]) for e in evals] == [
        (0, "hat"), (0, "extrapolated"), (1, "hat"), (1, "extrapolated"), (2, "hat"), (2, "extrapolated")]
    assert evals[0]["reward_mean"] == evals[1]["reward_mean"]  # the start: one policy, logged twice
    theta = load_file(run_dir / "checkpoints" / "iteration_0002" / "hf" / "model.safetensors")
    pihat = final_weights(run_dir)
    assert theta.keys() == pihat.keys() and any(not (theta[k] == pihat[k]).all() for k in theta)
    assert all((run_dir / f"iter_{i:04d}" / "eval_targets.parquet").is_file() for i in range(3))
    assert all(isinstance(e.get("dyn_G_total"), float) and "dyn_top_loss_share" in e for e in events(run_dir, "train"))
    proc = subprocess.run([str(BIN / "apo-pipeline"), "report", str(run_dir)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    written = [Path(line) for line in proc.stdout.split()]
    assert {"eval.png", "train.png", "stages.png", "dynamics.png", "report.md"} <= {p.name for p in written}
    assert "mean reward (sampled, hat)" in (run_dir / "report" / "report.md").read_text()
    assert all("dyn_pos_norm" in e and "dyn_neg_norm" in e for e in events(run_dir, "train"))
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)


def test_quiet_console_sends_library_output_to_actor_logs(apo_straight):
    """By default the terminal shows the console (stage lines, one line per evaluation) and no vLLM,
    DeepSpeed or Ray INFO line; those are in logs/<actor>.log and logs/driver.log."""
    terminal = (apo_straight.parent / "terminal.txt").read_text()
    assert "INFO" not in terminal and not VLLM_INFO.search(terminal) and "pid=" not in terminal, terminal[-3000:]
    lines = terminal.splitlines()
    assert lines[0] == f"apo: run directory {apo_straight} (logs: {apo_straight / 'logs'}/; apo-pipeline status {apo_straight})"
    evals = [line for line in lines if line.startswith("eval ")]
    assert [e.split("  ")[0] for e in evals] == ["eval start", "eval iteration 1/2", "eval iteration 2/2"]
    assert all("reward " in e and "win-rate vs start " in e for e in evals)
    assert any(re.match(r"\[iteration 2/2\] train  \d+ pairs  [\d.]+ pairs/s  in [\d.]+ s$", line) for line in lines)
    assert lines[-1].startswith("apo: finished in ") and len(lines) < 60
    logs = apo_straight / "logs"
    assert {"driver.log", "gen-0.log", "judge-0.log", "learner-0.log", "weight-sync.log"} <= {p.name for p in logs.iterdir()}
    assert VLLM_INFO.search((logs / "gen-0.log").read_text())
    assert "Initializing a V1 LLM engine" in (logs / "gen-0.log").read_text()
    assert "DeepSpeed" in (logs / "learner-0.log").read_text()
    assert "Started a local Ray instance" in (logs / "driver.log").read_text()
    status = subprocess.run([str(BIN / "apo-pipeline"), "status", str(apo_straight)], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and status.stdout.startswith(f"{apo_straight}: finished ("), status.stdout
    assert "iteration 2/2 done" in status.stdout and "failures        none" in status.stdout


def test_apo_sppo_smoke_uses_win_rate_matrices(tmp_path):
    """Iterative SPPO: the judge fills a K x K win-rate matrix per prompt and the pairs carry the
    estimated win probabilities of argmax vs argmin."""
    import datasets

    run_dir = tmp_path / "sppo"
    run_job("apo", run_dir, "algorithm.loss=sppo")
    check_run_contract(run_dir, "iteration", rounds=2)
    judged = datasets.load_dataset("parquet", data_files=str(run_dir / "iter_0001" / "judgements.parquet"), split="train")
    k = len(judged[0]["win_matrix"])
    assert k == 6 and all(len(m) == k for m in judged["win_matrix"])
    pairs = datasets.load_dataset("parquet", data_files=str(run_dir / "iter_0001" / "pairs.parquet"), split="train")
    assert all(len(w) == 2 and w[0] >= w[1] for w in pairs["win_probs"])


def test_mcpo_smoke_with_random_negatives_and_a_verbose_console(tmp_path):
    """`monitoring.console=verbose` brings every library line back to the terminal."""
    run_dir = tmp_path / "mcpo"
    proc = run_job("mcpo", run_dir, "algorithm.loss=rnce", "algorithm.num_negatives=2", "algorithm.negatives=random",
                   "monitoring.console=verbose")
    check_run_contract(run_dir, "iteration", rounds=1)
    assert VLLM_INFO.search(proc.stdout + proc.stderr) and "(GenerationEngine pid=" in proc.stdout + proc.stderr
    assert not (run_dir / "logs").exists()


def load_file(path: Path) -> dict:
    from safetensors.torch import load_file as load

    return load(path)


def final_weights(run_dir: Path) -> dict:
    return load_file(run_dir / "final" / "model.safetensors")


def job_cmd(job: str, run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(REPO / "jobs" / f"{job}.py"), "--preset", "smoke", "--run-dir", str(run_dir), *overrides]


def kill_when(cmd: list[str], ready, log_path: Path, timeout: float = 400) -> None:
    """Start `cmd`, SIGKILL its whole process group as soon as `ready(start_time)` holds."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        start = time.time()
        while not ready(start) and proc.poll() is None and time.time() < start + timeout:
            time.sleep(0.05)
        assert proc.poll() is None, f"the job ended before the kill point: {log_path.read_text()[-3000:]}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_apo_killed_at_several_points_resumes_exactly(apo_straight, tmp_path):
    """SIGKILL the driver mid-checkpoint-write, then mid-training once a mid-iteration checkpoint
    exists, then mid-generation, re-running the same command each time: the run ends with the
    weights, evaluations and training log of a run that was never stopped, and a round's stored
    data is reused instead of sampled again."""
    run_dir = tmp_path / "apo"
    cmd = job_cmd("apo", run_dir, *APO_OVERRIDES)
    ckpts = run_dir / "checkpoints"

    def latest() -> str:
        path = run_dir / "LATEST"
        return path.read_text().strip() if path.is_file() else ""

    def trained_since(start: float) -> bool:
        return (run_dir / "metrics.jsonl").is_file() and any(e["time"] > start for e in events(run_dir, "train"))

    kill_when(cmd, lambda start: ckpts.is_dir() and any(ckpts.glob(".tmp-*")), tmp_path / "1.log")
    assert not latest() or (ckpts / latest() / "manifest.json").is_file()
    status = json.loads(subprocess.run([str(BIN / "apo-pipeline"), "status", "--json", str(run_dir)],
                                       capture_output=True, text=True, timeout=60).stdout)
    assert status["state"] == "stopped" and "ended without a word" in status["reason"]  # SIGKILLed: no end state written
    kill_when(cmd, lambda start: "_step_" in latest() and trained_since(start), tmp_path / "2.log")
    rollouts = run_dir / "iter_0001" / "rollouts.parquet"
    written = rollouts.stat().st_mtime_ns
    kill_when(cmd, lambda start: latest() == "iteration_0001", tmp_path / "3.log")
    run_job("apo", run_dir, *APO_OVERRIDES)

    assert rollouts.stat().st_mtime_ns == written, "iteration 1's data was sampled again"
    assert any("reused" in e for e in events(run_dir, "data"))
    assert any(e["round_steps"] > 0 for e in events(run_dir, "resume")), "no resume inside an iteration"
    assert (run_dir / "metrics.discarded.jsonl").is_file()
    assert latest() == "iteration_0002" and not list(ckpts.glob(".tmp-*"))
    check_run_contract(run_dir, "iteration", rounds=2)
    resumed_w, straight_w = final_weights(run_dir), final_weights(apo_straight)
    assert resumed_w.keys() == straight_w.keys()
    assert max(float((resumed_w[k] - straight_w[k]).abs().max()) for k in resumed_w) <= 1e-6
    # dyn_G_total: a resumed run measures G against the same D' (the stored evaluation targets)
    for kind, field in (("eval", "reward_mean"), ("eval", "win_rate"), ("eval", "policy"), ("train", "loss"),
                        ("train", "step"), ("train", "dyn_G_total")):
        assert [e[field] for e in events(run_dir, kind)] == [e[field] for e in events(apo_straight, kind)], field


def test_onmcpo_restores_every_actor_after_a_learner_rank_dies(tmp_path):
    """`python jobs/onmcpo.py`: SIGKILL the learner rank's process once segment 1 is checkpointed;
    the job rebuilds every actor from that checkpoint by itself and finishes the run."""
    run_dir = tmp_path / "onmcpo"
    log = open(tmp_path / "job.log", "w")
    proc = subprocess.Popen(job_cmd("onmcpo", run_dir), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 400
        while not (run_dir / "LATEST").is_file() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        first = events(run_dir, "actors")[-1]
        os.kill(first["learner-0"], signal.SIGKILL)
        assert proc.wait(timeout=600) == 0, (tmp_path / "job.log").read_text()[-6000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    failures = [json.loads(line) for line in (run_dir / "failures.jsonl").read_text().splitlines()]
    assert [f["attempt"] for f in failures] == [0] and "Actor" in failures[0]["error"]
    assert [e["segment"] for e in events(run_dir, "resume")] == [1]
    assert events(run_dir, "actors")[-1]["learner-0"] != first["learner-0"]
    # pi_ref = the starting policy (algorithm.reference: initial): kept in every checkpoint, restored
    assert all((c / "ds" / "kept_reference_rank0_of1.pt").is_file() for c in (run_dir / "checkpoints").glob("segment_*"))
    check_run_contract(run_dir, "segment", rounds=2)
