"""`apo-pipeline simulate`: predict a round's wall time and each role's load, sequential against streamed.

    apo-pipeline simulate --preset gpu16                      # modelled: a docs/scaling.md layout, before / after
    apo-pipeline simulate --run runs/onmcpo                   # measured rates of a run, its round predicted
    apo-pipeline simulate --run runs/a --run runs/b --target runs/c --chunk 8
    apo-pipeline simulate --run runs/onmcpo --engines 2 --prompts 256 --steps 32   # what if
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from apo_pipeline.simulate.events import RoundResult, simulate_round
from apo_pipeline.simulate.measured import MeasuredRun, fit_rates, measured_result, read_run
from apo_pipeline.simulate.presets import DEFAULT_CHUNK, PRESETS, run_preset, scenarios
from apo_pipeline.simulate.report import describe, gpu_utilization, round_table
from apo_pipeline.simulate.workload import Layout, RoundWorkload, Schedule


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `apo-pipeline simulate`."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=sorted(PRESETS), help="a GPU layout of docs/scaling.md (FLOP-model rates)")
    src.add_argument("--run", action="append", metavar="RUN_DIR", help="fit stage rates to this run (repeatable)")
    p.add_argument("--target", metavar="RUN_DIR", help="the run whose round to predict (default: the first --run)")
    p.add_argument("--chunk", type=int, help=f"prompts per streamed chunk (default: {DEFAULT_CHUNK} for presets, "
                                             "a quarter of the round's prompts for runs)")
    p.add_argument("--ref-from-engines", action="store_true", help="streamed: log pi_ref comes with the samples")
    p.add_argument("--cores", type=float, help="CPU cores the run's actors share (default: this machine's)")
    for name, what in (("engines", "generation engines"), ("judges", "judges running"),
                       ("ranks", "learner ranks"), ("prompts", "prompts per round"), ("steps", "steps per round")):
        p.add_argument(f"--{name}", type=int, help=f"what if: {what}")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def run(args: argparse.Namespace) -> int:
    """Entry point of the subcommand; prints the tables (or JSON)."""
    if args.chunk is not None and args.chunk < 1:
        raise SystemExit("--chunk: need >= 1 prompts")
    return _presets(args) if args.preset else _measured(args)


def _presets(args: argparse.Namespace) -> int:
    rows = [run_preset(args.preset, sc) for sc in scenarios(args.chunk or DEFAULT_CHUNK, args.ref_from_engines)]
    first = rows[0]
    if args.json:
        _print_json([(r.scenario.name, r.result, r.layout) for r in rows], first.rates.source, first.workload)
        return 0
    print(f"{PRESETS[args.preset].title}; rates {first.rates.source}")
    for line in describe(first.workload, rows[-1].layout, gpus=True):
        print(line)
    labels = {"before": "before: sequential, judge-0 only", "pool": "judge pool, sequential",
              "after": f"after: judge pool, streamed (chunks of {rows[-1].scenario.schedule.chunk})"}
    print("\n".join(round_table([(labels[r.scenario.name], r.result, r.layout) for r in rows], unit="h", gpus=True)))
    return 0


def _measured(args: argparse.Namespace) -> int:
    cores = args.cores if args.cores is not None else float(len(os.sched_getaffinity(0)))
    runs = [read_run(d, cores=cores) for d in args.run]
    target = read_run(args.target, cores=cores) if args.target else runs[0]
    rates = fit_rates(runs)
    work, layout, changed = _what_if(target, args)
    chunk = args.chunk or max(1, work.prompts // 4)
    rows: list[tuple[str, RoundResult, Layout]] = []
    if not changed:
        steady = target.steady()
        rows.append((f"measured (mean of {len(steady)} round(s))", measured_result(steady), layout))
    for label, schedule in (("predicted sequential", Schedule("sequential")),
                            (f"predicted streamed (chunks of {chunk})", Schedule("streamed", chunk, args.ref_from_engines))):
        rows.append((label, simulate_round(work, layout, rates, schedule), layout))
    in_sample = any(r.path.resolve() == target.path.resolve() for r in runs)
    if args.json:
        _print_json(rows, rates.source, work)
        return 0
    print(f"rates: {rates.source}" + ("  [the target is one of the rate runs: not an independent check]" if in_sample else ""))
    for line in describe(work, layout):
        print(line)
    print("\n".join(round_table(rows)))
    return 0


def _what_if(target: MeasuredRun, args: argparse.Namespace) -> tuple[RoundWorkload, Layout, bool]:
    """The target's last steady round and layout with the --engines/--judges/... overrides applied."""
    work, layout = target.steady()[-1].workload, target.layout
    if args.engines or args.judges or args.ranks:
        judges = args.judges or layout.judges
        layout = dataclasses.replace(layout, engines=args.engines or layout.engines, judges=judges,
                                     judges_reserved=max(judges, layout.judges_reserved),
                                     learner_ranks=args.ranks or layout.learner_ranks)
    if args.prompts or args.steps:
        p = args.prompts or work.prompts
        f = p / work.prompts
        work = dataclasses.replace(
            work, prompts=p, candidates=round(work.candidates * f), judge_requests=round(work.judge_requests * f),
            ref_sequences=round(work.ref_sequences * f), steps=args.steps or work.steps, batch=min(work.batch, p))
    return work, layout, bool(args.engines or args.judges or args.ranks or args.prompts or args.steps)


def _print_json(rows: list[tuple[str, RoundResult, Layout]], source: str, work: RoundWorkload) -> None:
    out: dict[str, Any] = {"rates": source, "workload": dataclasses.asdict(work), "rows": []}
    for label, res, layout in rows:
        out["rows"].append({
            "label": label, "wall_s": res.wall_s, "stage_s": res.stage_s, "overlap": res.overlap,
            "busy_fraction": {r: res.busy_fraction(r) for r in res.busy_s},
            "gpu_utilization": gpu_utilization(res, layout) if res.tasks else None,
        })
    json.dump(out, sys.stdout, indent=2)
    print()
