"""The `apo-pipeline` console script: reports, comparisons and small utilities around runs.

    apo-pipeline status runs/onmcpo [--json]   # running / finished / failed / stopped, progress, evals, failures
    apo-pipeline report runs/onmcpo            # PNG plots + report.md into runs/onmcpo/report/
    apo-pipeline compare runs/a runs/b -o out  # overlay several runs
    apo-pipeline judge-eval runs/onmcpo        # the judge's scored fraction, order agreement, bias, ...
    apo-pipeline judge-eval --pairs pairs.jsonl judge.model=builtin:smollm2   # run an LLM judge on pairs
    apo-pipeline build-model [--seed 0]        # build (or find) the cached built-in tiny model
    apo-pipeline run onmcpo [args...]          # same as python jobs/onmcpo.py [args...]
    apo-pipeline simulate --preset gpu16       # predicted round time, sequential vs streamed
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _status(args: argparse.Namespace) -> int:
    from apo_pipeline.monitoring.status import format_status, run_status

    try:
        status = run_status(args.run_dir)
    except FileNotFoundError as exc:
        print(f"status: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(status, indent=1) if args.json else format_status(status))
    return 0


def _report(args: argparse.Namespace) -> int:
    from apo_pipeline.report import write_report

    for path in write_report(Path(args.run_dir)):
        print(path)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from apo_pipeline.report import write_comparison

    for path in write_comparison([Path(p) for p in args.run_dirs], Path(args.out)):
        print(path)
    return 0


def _judge_eval(args: argparse.Namespace) -> int:
    from apo_pipeline.report.judge_eval import evaluate_pairs_file, evaluate_run, format_report

    if (len(args.targets) != 1 or "=" in args.targets[0]) if args.pairs is None else any("=" not in t for t in args.targets):
        print("judge-eval: give one run directory, or --pairs FILE with key=value overrides", file=sys.stderr)
        return 2
    try:
        if args.pairs:
            report, extra = evaluate_pairs_file(args.pairs, args.targets, args.config, args.reference)
            title, out = args.pairs, Path(args.out) if args.out else None
        else:
            run_dir = args.targets[0]
            report, extra = evaluate_run(run_dir, args.reference)
            title, out = run_dir, Path(args.out) if args.out else Path(run_dir) / "report" / "judge.md"
    except (ValueError, FileNotFoundError) as exc:  # bad input: one line naming the file / key
        print(f"judge-eval: {exc}", file=sys.stderr)
        return 2
    text = format_report(report, title, extra)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps({**report, **extra}, indent=2, default=str))
    return 0


def _build_model(args: argparse.Namespace) -> int:
    from apo_pipeline.task import build_tiny_model

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the warm-up's progress lines off a TTY
    print(build_tiny_model(seed=args.seed))
    return 0


def _run(args: argparse.Namespace) -> int:
    from apo_pipeline.launch import run_job

    return run_job(args.job, args.job_args)


def _simulate(args: argparse.Namespace) -> int:
    from apo_pipeline.simulate.cli import run

    return run(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="apo-pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="whether a run is running, finished, failed or stopped, and how far it got")
    st.add_argument("run_dir")
    st.add_argument("--json", action="store_true", help="the same as one JSON object (for scripts)")
    st.set_defaults(func=_status)
    rep = sub.add_parser("report", help="plots and a Markdown summary of one run")
    rep.add_argument("run_dir")
    rep.set_defaults(func=_report)
    cmp_ = sub.add_parser("compare", help="overlay several runs")
    cmp_.add_argument("run_dirs", nargs="+")
    cmp_.add_argument("-o", "--out", default="runs/compare")
    cmp_.set_defaults(func=_compare)
    jev = sub.add_parser("judge-eval", help="judge report: from a run's judgements, or an LLM judge run on labelled pairs")
    jev.add_argument("targets", nargs="*", help="a run directory (reads its stored judgements; writes report/judge.md), "
                     "or with --pairs: key=value config overrides, e.g. judge.model=builtin:smollm2")
    jev.add_argument("--pairs", help="JSONL of {prompt, a, b, preferred?: a|b}: runs the LLM judge of judge.* on them")
    jev.add_argument("--config", help="job YAML whose judge / cluster sections to use (--pairs)")
    jev.add_argument("--reference", help="reward spec giving the reference preference (default: the run's built-in task's)")
    jev.add_argument("-o", "--out", help="Markdown output (a .json beside it)")
    jev.set_defaults(func=_judge_eval)
    bld = sub.add_parser("build-model", help="build the cached built-in tiny model")
    bld.add_argument("--seed", type=int, default=0)
    bld.set_defaults(func=_build_model)
    run = sub.add_parser("run", help="run a job (onmcpo, apo, mcpo)")
    run.add_argument("job", choices=["onmcpo", "apo", "mcpo"])
    run.add_argument("job_args", nargs=argparse.REMAINDER)
    run.set_defaults(func=_run)
    from apo_pipeline.simulate.cli import add_arguments

    sim = sub.add_parser("simulate", help="predict a round's wall time and each role's load, sequential vs streamed")
    add_arguments(sim)
    sim.set_defaults(func=_simulate)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
