"""End to end: prompts/s of OnMC-PO segments against TRL's online DPO trainer on one workload.

Both sides train the benchmark model on the same `workload.WORKLOAD.num_prompts` built-in prompts
(written to one .jsonl), K = 2 completions per prompt at temperature 1.0 (TRL's online DPO always
samples 2), the preferred one by the built-in reward r*, DPO at beta 0.1, 8 pairs per AdamW step,
lr 1e-4 constant, every prompt once, in `segments` windows of `segment_prompts` prompts.

- Ours: `python jobs/onmcpo.py` (a local Ray: one vLLM engine actor, the reward judge, one
  DeepSpeed learner rank at ZeRO-0 (one rank has nothing to partition; ZeRO-2's flat-buffer copies
  cost ~10% of a step here), 2 CPUs per actor so each gets the 2 torch threads TRL's process
  has), checkpoints and evaluations off. A segment's time runs from the start of its generation to
  the end of its weight sync (from the stage events in metrics.jsonl).
- TRL: `bench/trl_online_dpo.py` in its own process: `OnlineDPOTrainer` with vLLM colocated, a
  window's time is that of its `steps_per_segment` optimizer steps.

- Ours streamed: the same command with `loop.stream=true` (chunks of `STREAM_CHUNK` prompts,
  docs/algorithms.md), measured in the same rounds as the other sides (side by side).
- Ours streamed, 1 CPU per actor: as above with `cluster.cpus_per_actor=1`. Streamed, the engine
  and the learner run at once; at 2 CPUs each they keep 4 threads busy on the machine's 2 cores,
  at 1 each, 2 (one core per role, as a GPU layout gives each role its own devices).

Each side runs `ROUNDS` times, rotating which goes first. Segment / window 1 of every run (first
compilation, first sync) is left out; the figures are medians over the rest. Key `end_to_end_vs_trl` = ours / TRL prompts/s (goal >= 2). `overlap` = the sum of our
stage times over the segment's wall time: above 1 would mean stages ran concurrently.
`streamed` / `streamed_1cpu`: the streamed sides' figures; `streamed_vs_sequential` (and
`streamed_1cpu_vs_sequential`) = sequential / streamed seconds per segment (above 1: streaming is
faster on this workload).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from apo_pipeline.monitoring import read_metrics
from common import ROOT, build_model, model_info, ratio, write_result
from workload import WORKLOAD, write_prompts

TIMEOUT_S = 400  # one run of one side
ROUNDS = 2  # runs per side, alternating which side goes first
SEGMENT_STAGES = ("generate", "judge", "ref_logprobs", "train", "sync")
STREAM_CHUNK = 16  # prompts per chunk of a streamed segment: 4 chunks of the 64-prompt segment


def run(command: list[str], log: Path) -> None:
    """Run `command` from the repository root, its output in `log`; fail with the log's tail."""
    with log.open("w") as out:
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=TIMEOUT_S)
    if done.returncode:
        raise RuntimeError(f"{command[1]} exited {done.returncode}: {log.read_text()[-3000:]}")


def ours_overrides(model_dir: str, prompts_file: Path) -> list[str]:
    w = WORKLOAD
    return [
        f"model.path={model_dir}", f"model.max_model_len={w.max_model_len}", f"seed={w.seed}",
        f"data.prompts={prompts_file}", f"data.num_prompts={w.num_prompts}", "data.num_eval_prompts=8",
        f"generation.temperatures=[{w.temperature}]", f"generation.n_per_temperature={w.completions}",
        f"generation.max_tokens={w.max_tokens}",
        "judge.backend=reward", "judge.mode=prob",
        "algorithm.loss=dpo", f"algorithm.beta={w.beta}", "algorithm.num_negatives=1", "algorithm.dynamics_every=0",
        f"learner.lr={w.lr}", "learner.lr_schedule=constant", f"learner.max_grad_norm={w.max_grad_norm}",
        f"learner.micro_batch_size={w.pairs_per_step}", "learner.grad_accum=1", "learner.zero_stage=0",
        "cluster.num_engines=1", "cluster.learner_ranks=1", "cluster.cpus_per_actor=2",
        f"loop.segments={w.segments}", f"loop.total_steps={w.segments * w.steps_per_segment}",
        "eval.every=0", "checkpoint.enabled=false", "monitoring.progress=false",
    ]


def ours_segments(run_dir: Path) -> list[dict[str, Any]]:
    """Per segment: wall seconds from its (first) generation's start to its sync's end, and each
    stage's seconds (summed over a streamed segment's chunks)."""
    stages = [e for e in read_metrics(run_dir, "stage") if e["stage"] in SEGMENT_STAGES]
    out = []
    for s in range(1, WORKLOAD.segments + 1):
        mine = [e for e in stages if e["segment"] == s]
        start = min(e["time"] - e["seconds"] for e in mine if e["stage"] == "generate")
        end = max(e["time"] for e in mine if e["stage"] == "sync")
        out.append({"segment": s, "seconds": end - start,
                    "stages": {name: sum(e["seconds"] for e in mine if e["stage"] == name) for name in SEGMENT_STAGES}})
    return out


def trl_windows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Per window of `steps_per_segment` optimizer steps: its seconds, and the seconds TRL spent in
    generation calls (its weight loads included) and in weight loads alone."""
    ends = [record["train_start"], *record["step_ends"]]
    n = WORKLOAD.steps_per_segment
    if len(ends) != WORKLOAD.segments * n + 1:
        raise RuntimeError(f"TRL ran {len(ends) - 1} steps, expected {WORKLOAD.segments * n}")
    out = []
    for i in range(WORKLOAD.segments):
        start, end = ends[i * n], ends[(i + 1) * n]
        spent = {name: sum(s for t, s in calls if start < t <= end) for name, calls in record["timings"].items()}
        out.append({"window": i + 1, "seconds": end - start, "generate_incl_sync_s": spent["generate"],
                    "sync_s": spent["sync"]})
    return out


def versions() -> dict[str, str]:
    import accelerate
    import trl

    return {"trl": trl.__version__, "accelerate": accelerate.__version__}


def side_overrides(stream: bool, cpus: int | None) -> list[str]:
    """What a side adds to `ours_overrides`: streamed rounds, another CPU count per actor."""
    streamed = ["loop.stream=true", f"loop.stream_chunk={STREAM_CHUNK}"] if stream else []
    return streamed + ([f"cluster.cpus_per_actor={cpus}"] if cpus else [])


def run_ours(tmp: Path, model_dir: str, prompts_file: Path, r: int, stream: bool = False,
             cpus: int | None = None) -> list[dict[str, Any]]:
    name = f"ours{'-streamed' if stream else ''}{f'-{cpus}cpu' if cpus else ''}-{r}"
    command = [sys.executable, "jobs/onmcpo.py", "--run-dir", str(tmp / name), *ours_overrides(model_dir, prompts_file),
               *side_overrides(stream, cpus)]
    run(command, tmp / f"{name}.log")
    return [dict(s, run=r) for s in ours_segments(tmp / name)]


def run_streamed(tmp: Path, model_dir: str, prompts_file: Path, r: int) -> list[dict[str, Any]]:
    return run_ours(tmp, model_dir, prompts_file, r, stream=True)


def run_streamed_1cpu(tmp: Path, model_dir: str, prompts_file: Path, r: int) -> list[dict[str, Any]]:
    return run_ours(tmp, model_dir, prompts_file, r, stream=True, cpus=1)


def summary(segments: list[dict[str, Any]]) -> dict[str, Any]:
    """Median seconds of the steady segments (2..), per-stage medians and the overlap."""
    steady = [s for s in segments if s["segment"] > 1]
    median_s = statistics.median(s["seconds"] for s in steady)
    stage_sum = statistics.median(sum(s["stages"].values()) for s in steady)
    return {"segments": segments, "median_s": median_s,
            "breakdown_s": {n: statistics.median(s["stages"][n] for s in steady) for n in SEGMENT_STAGES},
            "overlap": {"stage_sum_s": stage_sum, "wall_s": median_s, "ratio": ratio(stage_sum, median_s)}}


def run_trl(tmp: Path, model_dir: str, prompts_file: Path, r: int) -> list[dict[str, Any]]:
    out = tmp / f"trl-{r}.json"
    run([sys.executable, "bench/trl_online_dpo.py", model_dir, str(prompts_file), str(out)], tmp / f"trl-{r}.log")
    record = json.loads(out.read_text())
    return [dict(win, run=r, init_s=record["init_s"]) for win in trl_windows(record)]


def main() -> None:
    w = WORKLOAD
    ours: list[dict[str, Any]] = []
    streamed: list[dict[str, Any]] = []
    streamed_1cpu: list[dict[str, Any]] = []
    trl: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model_dir = build_model(tmp_path)
        prompts_file = tmp_path / "prompts.jsonl"
        write_prompts(prompts_file)
        sides = [(ours, run_ours), (streamed, run_streamed), (trl, run_trl), (streamed_1cpu, run_streamed_1cpu)]
        for r in range(ROUNDS):  # each round starts with the next side
            for into, side in sides[r % len(sides):] + sides[:r % len(sides)]:
                into.extend(side(tmp_path, model_dir, prompts_file, r))
        info = model_info(model_dir)

    steady_trl = [win for win in trl if win["window"] > 1]
    seq, stream, stream_1cpu = summary(ours), summary(streamed), summary(streamed_1cpu)
    ours_s, streamed_s, streamed_1cpu_s = seq["median_s"], stream["median_s"], stream_1cpu["median_s"]
    trl_s = statistics.median(win["seconds"] for win in steady_trl)
    result = {
        "ratio": ratio(trl_s, ours_s),  # the same prompts per window: prompts/s ratio = inverse time ratio
        "goal": ">= 2.0",
        "ours_prompts_per_s": w.segment_prompts / ours_s,
        "trl_prompts_per_s": w.segment_prompts / trl_s,
        "ours": {k: v for k, v in seq.items() if k != "overlap"},
        "streamed": {**stream, "chunk": STREAM_CHUNK, "prompts_per_s": w.segment_prompts / streamed_s,
                     "ratio_vs_trl": ratio(trl_s, streamed_s)},
        "streamed_vs_sequential": ratio(ours_s, streamed_s),
        "streamed_1cpu": {**stream_1cpu, "chunk": STREAM_CHUNK, "cpus_per_actor": 1,
                          "prompts_per_s": w.segment_prompts / streamed_1cpu_s,
                          "ratio_vs_trl": ratio(trl_s, streamed_1cpu_s)},
        "streamed_1cpu_vs_sequential": ratio(ours_s, streamed_1cpu_s),
        "trl": {"windows": trl, "median_s": trl_s,
                "generate_incl_sync_median_s": statistics.median(win["generate_incl_sync_s"] for win in steady_trl),
                "sync_median_s": statistics.median(win["sync_s"] for win in steady_trl),
                "generation": "vLLM colocated (use_vllm, vllm_mode=colocate), layerwise-reload shim for vLLM 0.32"},
        "overlap": seq["overlap"],
        "workload": {"prompts_per_window": w.segment_prompts, "windows": w.segments, "runs_per_side": ROUNDS,
                     "measured": "windows 2.. of every run", "completions": w.completions,
                     "temperature": w.temperature, "max_tokens": w.max_tokens, "pairs_per_step": w.pairs_per_step,
                     "loss": "dpo", "beta": w.beta, "lr": w.lr,
                     "judge": "built-in reward r* (ours: Bradley-Terry prob judge; TRL: reward_funcs)"},
        "model": info,
        "versions": versions(),
    }
    write_result("end_to_end_vs_trl", result)
    print(f"end_to_end_vs_trl = {result['ratio']:.3f} ({result['ours_prompts_per_s']:.2f} vs "
          f"{result['trl_prompts_per_s']:.2f} prompts/s); streamed {result['streamed']['ratio_vs_trl']:.3f}, "
          f"streamed_vs_sequential {result['streamed_vs_sequential']:.3f}; streamed at 1 CPU per actor "
          f"{result['streamed_1cpu']['ratio_vs_trl']:.3f}, vs sequential {result['streamed_1cpu_vs_sequential']:.3f}")


if __name__ == "__main__":
    main()
