"""Validate the round simulator against measured CPU runs (leave one config out).

    .venv/bin/python bench/validate_simulator.py [--out runs/simulator-validation]
        [--only NAME ...] [--repeats 3] [--analyze-only] [--cores N]

Runs `python jobs/onmcpo.py` `--repeats` times per (mode, config) below: each config's two modes
back to back, configs and modes in reverse order on alternate repeats (so a slow phase of a shared
machine hits both modes of a config, not one mode or one config only); a run whose `final/` exists
is reused. Then, for each config, fits the stage rates to the SEQUENTIAL runs of every OTHER config
(never to the config itself), and the effective count of shared cores to the other configs' runs
of both modes (`Runs.fit_cores`; `--cores` fixes it instead), and predicts the config's steady
rounds (round >= 2; round 1 pays one-time warm-ups and is shown apart) in its mode. Run it on an
otherwise quiet machine. Prints measured against predicted seconds per round, the error, the
spread between the repeats (the measurement noise) and the machine's load average, then the
paired streamed / sequential ratios; writes `<out>/validation.json`.

Streamed rounds (mode `streamed`) are predicted from the same sequential rates; `schedule_of`
reads the chunk size from the overrides. `--only` limits the configs (not the modes).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from apo_pipeline.simulate.events import simulate_round
from apo_pipeline.simulate.measured import MeasuredRun, fit_rates, read_run
from apo_pipeline.simulate.workload import Schedule

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 1800
# 4 segments (3 steady rounds); the POS/NEG diagnostics (extra work on some steps) off everywhere
COMMON = ("loop.segments=4", "algorithm.dynamics_every=0")
# Per segment; the sizes differ across configs in every stage (prompts, steps, pairs per step,
# engines, held-out prompts) so that a stage's fixed cost and its rate can be told apart.
CONFIGS: dict[str, tuple[str, ...]] = {
    "smoke": ("--preset", "smoke", "data.num_prompts=32", "loop.total_steps=8"),  # the smoke round: 8 prompts, 2 steps of 8
    "s16": ("--preset", "smoke", "data.num_prompts=64", "loop.total_steps=16", "data.num_eval_prompts=16"),  # 16, 4 of 8
    "p64-s24": ("data.num_prompts=256", "loop.total_steps=96"),  # 64 prompts, 24 steps of 16 pairs, 32 held out
    "p128-s24": ("data.num_prompts=512", "loop.total_steps=96"),  # 128 prompts, 24 steps
    "p64-s48": ("data.num_prompts=256", "loop.total_steps=192"),  # 64 prompts, 48 steps
    "e2-p128-s24": ("data.num_prompts=512", "loop.total_steps=96", "cluster.num_engines=2"),  # 2 engines
    "b8-p64-s48": ("data.num_prompts=256", "loop.total_steps=192", "learner.micro_batch_size=8"),  # 48 steps of 8
    "b32-p128-s24": ("data.num_prompts=512", "loop.total_steps=96", "learner.micro_batch_size=32",
                     "data.num_eval_prompts=64"),  # 24 steps of 32, 64 held out
}
MODES: dict[str, tuple[str, ...]] = {
    "sequential": (),
    "streamed": ("loop.stream=true", "loop.stream_chunk=16"),
}
STAGE_COLUMNS = ("generate", "ref_logprobs", "train", "eval", "other")


def schedule_of(overrides: Sequence[str]) -> Schedule:
    """The simulator's schedule for a mode's overrides (loop.stream, loop.stream_chunk,
    algorithm.reference_from_engines)."""
    kv = dict(o.split("=", 1) for o in overrides if "=" in o)
    if kv.get("loop.stream", "false").lower() != "true":
        return Schedule("sequential")
    chunk = kv.get("loop.stream_chunk")
    return Schedule("streamed", int(chunk) if chunk else None,
                    kv.get("algorithm.reference_from_engines", "false").lower() == "true")


@dataclass
class Measured:
    """One run of a (mode, config): where, how long, how loaded the machine was (1-min load average)."""

    mode: str
    config: str
    repeat: int
    directory: str
    command: list[str]
    status: str
    seconds: float
    load_before: float
    load_after: float


def command(mode: str, config: str, directory: Path) -> list[str]:
    return [sys.executable, "jobs/onmcpo.py", "--run-dir", str(directory), *CONFIGS[config], *COMMON, *MODES[mode]]


def execute(mode: str, config: str, repeat: int, out: Path) -> Measured:
    """Run one job (or reuse a finished one) with its output in `<dir>.log`."""
    directory = out / mode / config / f"r{repeat}"
    info, cmd = directory / "validate.json", command(mode, config, directory)
    if (directory / "final").is_dir() and info.is_file():
        done = Measured(**json.loads(info.read_text()))
        if done.command[1:] == cmd[1:]:
            return done
    if directory.exists():
        shutil.rmtree(directory)  # unfinished, or made with other overrides: run it afresh
    directory.mkdir(parents=True)
    before, start = os.getloadavg()[0], time.perf_counter()
    with directory.with_suffix(".log").open("w") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        try:
            done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_S)
            status = "ok" if done.returncode == 0 else f"exit {done.returncode}"
        except subprocess.TimeoutExpired:
            status = f"timed out after {RUN_TIMEOUT_S} s"
    result = Measured(mode, config, repeat, str(directory), cmd, status, time.perf_counter() - start, before,
                      os.getloadavg()[0])
    if status == "ok":
        info.write_text(json.dumps(asdict(result)))
    return result


def _stages(stage_s: dict[str, float]) -> dict[str, float]:
    """Seconds per STAGE_COLUMNS entry ("other": sync, judge, checkpoint, driver)."""
    out = {c: stage_s.get(c, 0.0) for c in STAGE_COLUMNS[:-1]}
    out["eval"] += stage_s.get("eval_judge", 0.0)
    out["other"] = sum(stage_s.values()) - sum(out.values())
    return out


def predict(targets: Sequence[MeasuredRun], fitted_on: Sequence[MeasuredRun], schedule: Schedule) -> dict[str, Any]:
    """Predicted against measured seconds per round of `targets` (repeats of one config), with
    rates fitted on `fitted_on`; the steady rounds of all repeats are averaged."""
    rates = fit_rates(fitted_on)
    rounds, per_repeat = [], []
    for run in targets:
        steady = {r.index for r in run.steady()}
        rows = []
        for rnd in run.rounds:
            res = simulate_round(rnd.workload, run.layout, rates, schedule)
            rows.append({"run": run.path.name, "round": rnd.index, "steady": rnd.index in steady,
                         "measured_s": rnd.wall_s, "predicted_s": res.wall_s,
                         "measured_stage_s": _stages(rnd.stage_s), "predicted_stage_s": _stages(res.stage_s)})
        per_repeat.append(statistics.fmean(r["measured_s"] for r in rows if r["steady"]))
        rounds += rows
    steady_rows = [r for r in rounds if r["steady"]]
    first = [r for r in rounds if not r["steady"]]

    def mean(key: str, rows: list[dict[str, Any]] = steady_rows) -> float:
        return statistics.fmean(r[key] for r in rows) if rows else float("nan")

    measured, predicted = mean("measured_s"), mean("predicted_s")
    return {
        "rates": rates.source, "measured_s": measured, "predicted_s": predicted, "error": predicted / measured - 1.0,
        "per_repeat_s": per_repeat, "repeat_spread": (max(per_repeat) - min(per_repeat)) / measured,
        "first_measured_s": mean("measured_s", first),
        "first_predicted_s": mean("predicted_s", first),
        "stages": {c: (statistics.fmean(r["measured_stage_s"][c] for r in steady_rows),
                       statistics.fmean(r["predicted_stage_s"][c] for r in steady_rows)) for c in STAGE_COLUMNS},
        "rounds": rounds,
    }


CORE_GRID = 0.1  # step of the effective core counts tried, from 1 up to the machine's


class Runs:
    """The measured runs read back at an assumed count of shared cores (cached per count)."""

    def __init__(self, measured: Sequence[Measured]) -> None:
        self.measured = measured
        self.cache: dict[float, dict[tuple[str, str, int], MeasuredRun]] = {}

    def at(self, cores: float) -> dict[tuple[str, str, int], MeasuredRun]:
        if cores not in self.cache:
            self.cache[cores] = {(m.mode, m.config, m.repeat): read_run(m.directory, cores=cores) for m in self.measured}
        return self.cache[cores]

    def fit_cores(self, name: str, most: float) -> float:
        """The effective count of shared cores (1, 1.1, ... `most`) that best predicts the steady rounds
        of every OTHER config in both modes (least mean squared relative error), with rates fitted on
        their sequential runs: config `name`'s own runs never enter. On a CPU machine the actors do
        not get every core (Ray's daemons and the driver use some; two engines scale below 2x)."""
        def score(cores: float) -> float:
            runs = {k: r for k, r in self.at(cores).items() if k[1] != name}
            rates = fit_rates([r for (md, _, _), r in runs.items() if md == "sequential"])
            return statistics.fmean(
                (simulate_round(rnd.workload, run.layout, rates, schedule_of(MODES[md])).wall_s / rnd.wall_s - 1) ** 2
                for (md, _, _), run in runs.items() for rnd in run.steady())
        grid = [round(1.0 + CORE_GRID * i, 6) for i in range(int(round((most - 1.0) / CORE_GRID)) + 1)]
        return min(grid, key=score)


def run_all(names: Sequence[str], repeats: int, out: Path, analyze_only: bool) -> list[Measured]:
    """Every (repeat, config, mode) run: a config's two modes back to back (so a slow phase of a
    shared machine hits both), configs and modes reversed on odd repeats."""
    done = []
    for repeat in range(repeats):
        step = -1 if repeat % 2 else 1
        for name in list(names)[::step]:
            for mode in list(MODES)[::step]:
                if analyze_only:
                    info = out / mode / name / f"r{repeat}" / "validate.json"
                    if info.is_file():
                        m = Measured(**json.loads(info.read_text()))
                        if m.command[1:] == command(mode, name, Path(m.directory))[1:]:
                            done.append(m)
                    continue
                m = execute(mode, name, repeat, out)
                print(f"{mode}/{name}/r{repeat}: {m.status} in {m.seconds:.0f} s, load average "
                      f"{m.load_before:.2f} -> {m.load_after:.2f}", flush=True)
                done.append(m)
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "simulator-validation")
    p.add_argument("--only", nargs="+", choices=sorted(CONFIGS), help="configs to run and check (default: all)")
    p.add_argument("--repeats", type=int, default=3, help="runs per (mode, config)")
    p.add_argument("--analyze-only", action="store_true", help="do not run jobs; use the finished runs in --out")
    p.add_argument("--cores", type=float, help="CPU cores the runs' actors shared, for every config (default: "
                   "fitted per config on the other configs' runs, at most this machine's)")
    args = p.parse_args(argv)
    measured = [m for m in run_all(args.only or list(CONFIGS), args.repeats, args.out, args.analyze_only)
                if m.status == "ok"]
    machine = float(len(os.sched_getaffinity(0)))
    read = Runs(measured)
    fitted = {name: args.cores or read.fit_cores(name, machine) for name in dict.fromkeys(m.config for m in measured)}
    report = []
    print(f"\n| mode | config | cores | measured s/round (per repeat) | predicted s/round | error | repeat spread | "
          f"round 1 measured / predicted | predicted / measured s: {' / '.join(STAGE_COLUMNS)} | load average |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode in MODES:
        for name in dict.fromkeys(m.config for m in measured if m.mode == mode):
            cores = fitted[name]
            runs = read.at(cores)
            targets = [r for (md, n, _), r in runs.items() if (md, n) == (mode, name)]
            others = [r for (md, n, _), r in runs.items() if md == "sequential" and n != name]
            if not others:
                continue
            res = predict(targets, others, schedule_of(MODES[mode]))
            loads = [x for m in measured if (m.mode, m.config) == (mode, name) for x in (m.load_before, m.load_after)]
            stages = " / ".join(f"{res['stages'][c][1]:.2f}:{res['stages'][c][0]:.2f}" for c in STAGE_COLUMNS)
            repeats = " / ".join(f"{x:.2f}" for x in res["per_repeat_s"])
            print(f"| {mode} | {name} | {cores:g} | {res['measured_s']:.2f} ({repeats}) | {res['predicted_s']:.2f} | {res['error']:+.0%} | "
                  f"{res['repeat_spread']:.0%} | {res['first_measured_s']:.2f} / {res['first_predicted_s']:.2f} | "
                  f"{stages} | {min(loads):.1f}-{max(loads):.1f} |")
            report.append({"mode": mode, "config": name, "cores": cores, "overrides": [*CONFIGS[name], *COMMON, *MODES[mode]],
                           "runs": [asdict(m) for m in measured if (m.mode, m.config) == (mode, name)], **res})
    if report:
        worst = max(abs(r["error"]) for r in report)
        how = f"{args.cores:g} for all" if args.cores else "fitted on the other configs' runs of both modes"
        print(f"\nlargest error {worst:.0%} over {len(report)} configs (goal: within 20%); rates of each config "
              f"fitted on the sequential runs of the other configs; cores {how} ({machine:g} on this machine)")
        paired = paired_ratios(report)
        (args.out / "validation.json").write_text(json.dumps({"machine_cores": machine, "cores": how,
                                                              "results": report, "paired": paired}, indent=1))
    return 0


def paired_ratios(report: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Streamed / sequential seconds per round of each config: measured per repeat (the two modes
    ran back to back, so a slow phase of the machine cancels) against predicted. Printed as a table."""
    by = {(r["mode"], r["config"]): r for r in report}
    rows = []
    print("\n| config | streamed / sequential, measured (per repeat) | predicted |\n| --- | --- | --- |")
    for (mode, name), seq in by.items():
        st = by.get(("streamed", name))
        if mode != "sequential" or st is None or len(st["per_repeat_s"]) != len(seq["per_repeat_s"]):
            continue
        each = [b / a for a, b in zip(seq["per_repeat_s"], st["per_repeat_s"])]
        predicted = st["predicted_s"] / seq["predicted_s"]
        rows.append({"config": name, "measured": statistics.fmean(each), "per_repeat": each, "predicted": predicted})
        print(f"| {name} | {statistics.fmean(each):.2f} ({' / '.join(f'{x:.2f}' for x in each)}) | {predicted:.2f} |")
    return rows


if __name__ == "__main__":
    sys.exit(main())
