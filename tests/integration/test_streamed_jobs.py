"""Streamed rounds (`loop.stream`) end to end on the tiny model: the stages overlap, a streamed run
killed mid-stream resumes to the weights of one never stopped (so two streamed runs with one seed
agree), an engine killed mid-stream is re-synced with the round's start, and OnMC-PO streams with
log pi_ref taken from the engines. Reuses test_jobs' machinery."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_jobs import REPO, check_run_contract, events, final_weights, job_cmd, kill_when, run_job

pytestmark = pytest.mark.slow

# 8 prompts per iteration in chunks of 2: 4 chunks, S = 5 steps, floor(5 P_j / 8) = 1, 2, 3, 5 of
# them unlocked after each chunk; a checkpoint after every step once the iteration's data is
# stored (so one inside each iteration, after step 4 of 5).
STREAMED = ("loop.stream=true", "loop.stream_chunk=2", "loop.epochs=5", "checkpoint.every_steps=1")


def stages(run_dir: Path, unit: str, index: int) -> list[dict]:
    """Stage events of round `index` with their start time (end `time` minus `seconds`)."""
    return [dict(e, start=e["time"] - e["seconds"]) for e in events(run_dir, "stage") if e.get(unit) == index]


@pytest.fixture(scope="module")
def streamed_straight(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("streamed") / "apo"
    run_job("apo", run_dir, *STREAMED)
    return run_dir


def test_streamed_apo_overlaps_its_stages(streamed_straight):
    """The judge takes chunk 1 before generation of the last chunk ends; training starts before the
    last chunk is judged; the steps and the stored data are those of the round."""
    run_dir = streamed_straight
    check_run_contract(run_dir, "iteration", rounds=2)
    for t in (1, 2):
        st = stages(run_dir, "iteration", t)
        chunks = lambda name: sorted((e for e in st if e["stage"] == name and "chunk" in e), key=lambda e: e["chunk"])
        generate, judge, train = chunks("generate"), chunks("judge"), chunks("train")
        assert [e["chunk"] for e in generate] == [0, 1, 2, 3] == [e["chunk"] for e in judge]
        assert judge[0]["start"] < generate[-1]["time"], "the judge waited for the whole round's generation"
        assert train[0]["start"] < judge[-1]["time"], "training waited for the whole round's judging"
        assert [e["chunk"] for e in train] == [0, 1, 2, 3]
    assert [e["step"] for e in events(run_dir, "train")] == list(range(10))
    assert (run_dir / "iter_0001" / "stream.json").is_file()


def test_streamed_apo_killed_mid_stream_resumes_exactly(streamed_straight, tmp_path):
    """SIGKILL while iteration 2 streams (its data incomplete), then once a mid-iteration checkpoint
    of a streamed iteration exists; the re-run ends with the weights, losses and evaluations of the
    run never stopped (a second streamed run with the same seed)."""
    run_dir = tmp_path / "apo"
    cmd = job_cmd("apo", run_dir, *STREAMED)

    def streaming(index: int):
        def ready(start: float) -> bool:
            return (run_dir / "metrics.jsonl").is_file() and any(
                e.get("iteration") == index and e.get("stage") == "generate" and e["time"] > start
                for e in events(run_dir, "stage"))
        return ready

    kill_when(cmd, streaming(2), tmp_path / "1.log")
    assert not (run_dir / "iter_0002" / "pairs.parquet").exists(), "killed after iteration 2's data was complete"

    def mid_round_checkpoint(start: float) -> bool:
        latest = run_dir / "LATEST"
        return latest.is_file() and "_step_" in latest.read_text() and any(
            e["time"] > start for e in events(run_dir, "train"))

    kill_when(cmd, mid_round_checkpoint, tmp_path / "2.log")
    run_job("apo", run_dir, *STREAMED)

    assert any(e["round_steps"] > 0 for e in events(run_dir, "resume")), "no resume inside a streamed iteration"
    check_run_contract(run_dir, "iteration", rounds=2)
    resumed, straight = final_weights(run_dir), final_weights(streamed_straight)
    assert resumed.keys() == straight.keys()
    assert max(float((resumed[k] - straight[k]).abs().max()) for k in resumed) <= 1e-6
    for kind, field in (("train", "loss"), ("train", "step"), ("eval", "reward_mean"), ("eval", "win_rate")):
        assert [e[field] for e in events(run_dir, kind)] == [e[field] for e in events(streamed_straight, kind)], field


def test_an_engine_killed_mid_stream_is_resynced_with_the_round_start(streamed_straight, tmp_path):
    """SIGKILL gen-0 once chunk 1 of iteration 2 is generated (chunks 2 and 3 still to sample). Ray
    restarts it; by the time it is back the learner has trained on the first chunks, so it must get
    the kept round-start weights, not the moved ones: the run ends as the one never disturbed."""
    run_dir = tmp_path / "apo"
    with open(tmp_path / "job.log", "w") as log:
        proc = subprocess.Popen(job_cmd("apo", run_dir, *STREAMED), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.time() + 400
            while proc.poll() is None and time.time() < deadline and not (
                    (run_dir / "metrics.jsonl").is_file() and any(
                        e["stage"] == "generate" and e.get("iteration") == 2 and e.get("chunk") == 1
                        for e in events(run_dir, "stage"))):
                time.sleep(0.05)
            os.kill(events(run_dir, "actors")[-1]["gen-0"], signal.SIGKILL)
            assert proc.wait(timeout=600) == 0, (tmp_path / "job.log").read_text()[-6000:]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    faults = events(run_dir, "fault")
    assert [(e["iteration"], e["weights"]) for e in faults] == [(2, "round_start")]
    moved = [e for e in events(run_dir, "train") if e["iteration"] == 2 and e["time"] < faults[0]["time"]]
    assert moved, "the engine was back before the learner moved: the re-sync was not put to the test"
    check_run_contract(run_dir, "iteration", rounds=2)
    restarted, straight = final_weights(run_dir), final_weights(streamed_straight)
    assert max(float((restarted[k] - straight[k]).abs().max()) for k in restarted) <= 1e-6
    assert [e["loss"] for e in events(run_dir, "train")] == [e["loss"] for e in events(streamed_straight, "train")]


def test_streamed_onmcpo_takes_the_reference_from_the_engines(tmp_path):
    """OnMC-PO streamed with algorithm.reference_from_engines: no learner reference pass; the stored
    log pi_ref of every candidate is the log-prob its engine returned while sampling it."""
    import datasets

    run_dir = tmp_path / "onmcpo"
    run_job("onmcpo", run_dir, "loop.stream=true", "loop.stream_chunk=4", "algorithm.reference=round",
            "algorithm.reference_from_engines=true")
    check_run_contract(run_dir, "segment", rounds=2)
    refs = [e for e in events(run_dir, "stage") if e["stage"] == "ref_logprobs"]
    assert len(refs) == 4 and all(e["source"] == "engines" for e in refs)
    rollouts = datasets.load_dataset("parquet", data_files=str(run_dir / "seg_0001" / "rollouts.parquet"), split="train")
    pairs = datasets.load_dataset("parquet", data_files=str(run_dir / "seg_0001" / "pairs.parquet"), split="train")
    assert len(pairs) == len(rollouts) == 8  # no prompt dropped by the reward judge
    assert [list(r) for r in pairs["ref_logps"]] == [list(r) for r in rollouts["logprobs"]]
