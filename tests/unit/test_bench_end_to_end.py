"""bench/bench_end_to_end.py's settings and timing windows, on synthetic records (nothing is run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # bench/ is scripts, not a package
import bench_end_to_end as e2e  # noqa: E402
from workload import WORKLOAD, read_prompts, write_prompts  # noqa: E402

from apo_pipeline.config import OnMCPOConfig  # noqa: E402
from apo_pipeline.config.load import load_config  # noqa: E402
from apo_pipeline.launch import CONFIG_DIR  # noqa: E402
from apo_pipeline.monitoring import MetricsLogger  # noqa: E402


def test_our_side_runs_the_workload(tmp_path):
    """Every override is a real key and gives the workload TRL runs: K = 2 at T = 1, DPO, 8 pairs a step."""
    prompts = tmp_path / "prompts.jsonl"
    written = write_prompts(prompts)
    assert read_prompts(prompts) == written and len(set(written)) == WORKLOAD.num_prompts
    cfg = load_config(OnMCPOConfig, CONFIG_DIR / "onmcpo.yaml", e2e.ours_overrides(str(tmp_path), prompts))
    assert cfg.generation.num_candidates == WORKLOAD.completions == 2 and cfg.generation.temperatures == [1.0]
    assert cfg.algorithm.loss == "dpo" and cfg.algorithm.num_negatives == 1 and cfg.judge.backend == "reward"
    assert cfg.learner.micro_batch_size * cfg.learner.grad_accum == WORKLOAD.pairs_per_step
    assert cfg.loop.total_steps * WORKLOAD.pairs_per_step == cfg.data.num_prompts == len(read_prompts(prompts))
    assert not cfg.checkpoint.enabled and cfg.learner.lr == WORKLOAD.lr


def test_the_streamed_sides_differ_only_in_streaming_and_cpus(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    write_prompts(prompts)
    base = e2e.ours_overrides(str(tmp_path), prompts)
    seq, stream, one = (load_config(OnMCPOConfig, CONFIG_DIR / "onmcpo.yaml", base + e2e.side_overrides(*side))
                        for side in ((False, None), (True, None), (True, 1)))
    assert not seq.loop.stream and stream.loop.stream and one.loop.stream
    assert stream.loop.stream_chunk == one.loop.stream_chunk == e2e.STREAM_CHUNK
    assert seq.cluster.cpus_per_actor == stream.cluster.cpus_per_actor == 2 and one.cluster.cpus_per_actor == 1
    assert seq.model_dump()["learner"] == one.model_dump()["learner"]


def test_our_segment_runs_from_generation_start_to_sync_end(tmp_path):
    logger = MetricsLogger(tmp_path, ray_metrics=False)
    end = 100.0
    for s in range(1, WORKLOAD.segments + 1):
        for stage, seconds in (("generate", 1.0), ("judge", 0.1), ("ref_logprobs", 0.5), ("train", 4.0),
                               ("sync", 0.2), ("checkpoint", 9.0)):
            end += seconds
            logger.log("stage", stage=stage, seconds=seconds, segment=s, time=end)
    logger.close()
    segments = e2e.ours_segments(tmp_path)
    assert [s["segment"] for s in segments] == list(range(1, WORKLOAD.segments + 1))
    assert all(s["seconds"] == pytest.approx(5.8) for s in segments)  # the checkpoint falls outside
    assert segments[0]["stages"] == {"generate": 1.0, "judge": 0.1, "ref_logprobs": 0.5, "train": 4.0, "sync": 0.2}


def test_a_streamed_segment_sums_its_chunks_stages_over_its_wall_time(tmp_path):
    """Chunks overlap: the segment runs from the first generation's start to the sync's end, each
    stage's seconds are summed over the chunks, so the overlap (stage sum / wall) exceeds 1."""
    logger = MetricsLogger(tmp_path, ray_metrics=False)
    for s in range(1, WORKLOAD.segments + 1):
        base = 100.0 * s
        for chunk in range(2):  # generate chunk 1 runs while chunk 0 is judged and trained on
            logger.log("stage", stage="generate", seconds=1.0, segment=s, chunk=chunk, time=base + 1 + chunk)
            logger.log("stage", stage="judge", seconds=1.0, segment=s, chunk=chunk, time=base + 2 + chunk)
            logger.log("stage", stage="ref_logprobs", seconds=0.5, segment=s, chunk=chunk, time=base + 2.5 + chunk)
            logger.log("stage", stage="train", seconds=0.5, segment=s, chunk=chunk, time=base + 3 + chunk)
        logger.log("stage", stage="sync", seconds=1.0, segment=s, time=base + 5)
    logger.close()
    segments = e2e.ours_segments(tmp_path)
    assert all(seg["seconds"] == pytest.approx(5.0) for seg in segments)
    assert segments[0]["stages"] == {"generate": 2.0, "judge": 2.0, "ref_logprobs": 1.0, "train": 1.0, "sync": 1.0}
    assert e2e.summary(segments)["overlap"]["ratio"] == pytest.approx(7.0 / 5.0)


def test_trl_windows_split_the_steps_and_their_generation_time():
    n = WORKLOAD.steps_per_segment
    ends = [10.0 + step for step in range(1, WORKLOAD.segments * n + 1)]  # a step a second
    record = {"train_start": 10.0, "step_ends": ends,
              "timings": {"generate": [(t - 0.5, 0.25) for t in ends], "sync": [(t - 0.6, 0.1) for t in ends]}}
    windows = e2e.trl_windows(record)
    assert [w["seconds"] for w in windows] == [float(n)] * WORKLOAD.segments
    assert windows[1]["generate_incl_sync_s"] == pytest.approx(0.25 * n) and windows[1]["sync_s"] == pytest.approx(0.1 * n)
    with pytest.raises(RuntimeError, match="TRL ran"):
        e2e.trl_windows(dict(record, step_ends=ends[:-1]))
