"""Run every system benchmark, each in its own Python process (no Ray / vLLM / DeepSpeed state
leaks between them), write bench/results.json afresh and print the results as a markdown table.

`end_to_end_vs_trl` needs TRL (the `bench` extra, which `make bench` installs).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, environment, write_result

BENCH_DIR = Path(__file__).resolve().parent
BENCHMARKS = {  # key: (script, timeout in seconds)
    "generation_vs_vllm": ("bench_generation.py", 600),
    "learner_vs_deepspeed": ("bench_learner.py", 600),
    "sync_vs_memcpy": ("bench_sync.py", 600),
    "judge_vs_vllm": ("bench_judge.py", 600),
    "end_to_end_vs_trl": ("bench_end_to_end.py", 1800),
}


def run(key: str, script: str, timeout_s: int) -> None:
    """Run one benchmark script; on failure record `{"failed": ...}` under its key."""
    start = time.perf_counter()
    try:
        command = [sys.executable, str(BENCH_DIR / script)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        error = None if done.returncode == 0 else f"exit {done.returncode}: {done.stderr.strip()[-2000:]}"
        last = (done.stdout.strip().splitlines() or [""])[-1]
    except subprocess.TimeoutExpired:
        error, last = f"timed out after {timeout_s} s", ""
    print(f"[{time.perf_counter() - start:5.0f} s] {script}: {error or last}", flush=True)
    if error:
        write_result(key, {"failed": error})


def table(results: dict) -> str:
    """Markdown table: one row per figure, ours against the baseline it is measured with."""
    rows = ["| figure | ratio | goal | ours | baseline |", "| --- | --- | --- | --- | --- |"]

    def row(name: str, value: float, goal: str, ours: str, base: str) -> None:
        rows.append(f"| {name} | {value:.3f} | {goal} | {ours} | {base} |")

    if "ratio" in (g := results.get("generation_vs_vllm", {})):
        row("generation_vs_vllm", g["ratio"], g["goal"], f"{g['ours_tokens_per_s']:.0f} tokens/s (GenerationPool)",
            f"{g['plain_vllm_tokens_per_s']:.0f} tokens/s (vllm.LLM.generate)")
    if "ratio" in (lr := results.get("learner_vs_deepspeed", {})):
        pps = lr["pairs_per_s"]
        row("learner_vs_deepspeed", lr["ratio"], lr["goal"], f"{pps['ours']:.2f} pairs/s (LearnerGroup)",
            f"{pps['plain_reference_model']:.2f} pairs/s (DeepSpeed loop, resident reference model)")
        row("- vs stored ref log-probs", lr["ratio_vs_plain_stored_refs"], "", f"{pps['ours']:.2f} pairs/s",
            f"{pps['plain_stored_refs']:.2f} pairs/s (DeepSpeed loop, stored ref log-probs)")
        row("- one epoch, ours pays its ref pass", lr["ratio_one_epoch_incl_ref_pass"], "",
            f"{lr['ours']['median_s'] + lr['ours_ref_pass']['median_s']:.2f} s/step (train + ref pass)",
            f"{lr['plain_reference_model']['median_s']:.2f} s/step")
    if "ratio" in (s := results.get("sync_vs_memcpy", {})):
        memcpy = f"{s['memcpy']['median_s'] * 1e3:.1f} ms (copy_ of {s['memcpy']['bytes'] / 2**20:.0f} MiB)"
        for r in sorted(s["sweep"], key=lambda r: r["bucket_mib"] != s["bucket_mib"]):  # the default first
            default = r["bucket_mib"] == s["bucket_mib"]
            name, goal = ("sync_vs_memcpy", s["goal"]) if default else (f"- bucket {r['bucket_mib']} MiB", "")
            ours = f"{r['median_s'] * 1e3:.0f} ms/sync ({r['buckets']} buckets of <= {r['bucket_mib']} MiB)"
            row(name, r["ratio"], goal, ours, memcpy)
    if "ratio" in (j := results.get("judge_vs_vllm", {})):
        row("judge_vs_vllm", j["ratio"], j["goal"], f"{j['ours_comparisons_per_s']:.1f} comparisons/s (JudgePool.rank)",
            f"{j['plain_vllm_comparisons_per_s']:.1f} comparisons/s (vllm.LLM.generate per round)")
        r = j["workloads"]["ranking"]
        row("- vs vLLM's CPU default KV block", r["ratio_vs_default_block"], "", f"{r['ours_comparisons_per_s']:.1f} comparisons/s",
            f"{r['default_block_comparisons_per_s']:.1f} comparisons/s (block 128: no prefix hits)")
        m = j["workloads"]["matrix"]
        row("- SPPO matrices", m["ratio"], "", f"{m['ours_comparisons_per_s']:.1f} comparisons/s (JudgePool.win_rates)",
            f"{m['plain_vllm_comparisons_per_s']:.1f} comparisons/s (one vllm.LLM.generate)")
    if "ratio" in (e := results.get("end_to_end_vs_trl", {})):
        row("end_to_end_vs_trl", e["ratio"], e["goal"], f"{e['ours_prompts_per_s']:.2f} prompts/s (OnMC-PO segment)",
            f"{e['trl_prompts_per_s']:.2f} prompts/s (TRL OnlineDPOTrainer, vLLM colocated)")
        o = e["overlap"]
        row("- overlap (stage sum / wall)", o["ratio"], "", f"{o['stage_sum_s']:.2f} s of stages",
            f"{o['wall_s']:.2f} s per segment")
        for key, label in (("streamed", "streamed"), ("streamed_1cpu", "streamed, 1 CPU per actor")):
            if key not in e:
                continue
            st = e[key]
            row(f"- {label} vs TRL", st["ratio_vs_trl"], ">= 2.0", f"{st['prompts_per_s']:.2f} prompts/s ({label}, "
                f"chunks of {st['chunk']})", f"{e['trl_prompts_per_s']:.2f} prompts/s (TRL)")
            row(f"- {label} vs sequential", e[f"{key}_vs_sequential"], "", f"{st['median_s']:.2f} s per segment "
                f"({label})", f"{e['ours']['median_s']:.2f} s per segment (sequential)")
            so = st["overlap"]
            row(f"- {label} overlap (stage sum / wall)", so["ratio"], "> 1.3", f"{so['stage_sum_s']:.2f} s of stages",
                f"{so['wall_s']:.2f} s per segment")
    failed = [key for key, value in results.items() if isinstance(value, dict) and "failed" in value]
    rows += [f"| {key} | FAILED | | | |" for key in failed]
    return "\n".join(rows)


def main() -> None:
    RESULTS.unlink(missing_ok=True)
    write_result("env", environment())
    for key, (script, timeout_s) in BENCHMARKS.items():
        run(key, script, timeout_s)
    results = json.loads(RESULTS.read_text())
    print(f"\n{table(results)}\n\nmachine: {results['env']['cpu']}, {results['env']['nproc']} CPUs; "
          f"results in {RESULTS.relative_to(BENCH_DIR.parent)}")


if __name__ == "__main__":
    main()
