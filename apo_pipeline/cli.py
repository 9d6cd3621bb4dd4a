"""The `apo-pipeline` console script: reports, comparisons and small utilities around runs.

    apo-pipeline report runs/onmcpo            # PNG plots + report.md into runs/onmcpo/report/
    apo-pipeline compare runs/a runs/b -o out  # overlay several runs
    apo-pipeline build-model [--seed 0]        # build (or find) the cached built-in tiny model
    apo-pipeline run onmcpo [args...]          # same as python jobs/onmcpo.py [args...]
    apo-pipeline simulate --preset gpu16       # predicted round time, sequential vs streamed
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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


def _build_model(args: argparse.Namespace) -> int:
    from apo_pipeline.task import build_tiny_model

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
    rep = sub.add_parser("report", help="plots and a Markdown summary of one run")
    rep.add_argument("run_dir")
    rep.set_defaults(func=_report)
    cmp_ = sub.add_parser("compare", help="overlay several runs")
    cmp_.add_argument("run_dirs", nargs="+")
    cmp_.add_argument("-o", "--out", default="runs/compare")
    cmp_.set_defaults(func=_compare)
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
