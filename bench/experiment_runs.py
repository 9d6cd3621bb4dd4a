"""The runs of `bench/experiments.py`: one seed of one variant each, run as its job would be, and
archived so a batch longer than one sitting can be finished later, on another machine.

A run's directory (`<out>/<experiment>/<variant>/seed<k>`, not kept in git) holds everything the
job writes. Its metrics.jsonl, the only file the aggregation reads, is archived gzipped under
`<archive>/<experiment>/<variant>/seed<k>.jsonl.gz` (kept in git, about 12 KB a run); a run counts
as finished when its directory holds `final/` or its archive exists.
"""

from __future__ import annotations

import gzip
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from experiment_specs import EXPERIMENTS, Experiment, Variant

ROOT = Path(__file__).resolve().parent.parent
ARCHIVE = ROOT / "bench" / "experiment-runs"
RUN_TIMEOUT_S = 1800  # a run takes minutes; this only stops a hung one
Event = dict[str, Any]


@dataclass(frozen=True)
class Run:
    """One seed of one variant: its run directory and its archived metrics file."""

    experiment: Experiment
    variant: Variant
    seed: int
    directory: Path
    archive: Path

    @property
    def command(self) -> list[str]:
        return [sys.executable, f"jobs/{self.variant.job}.py", "--run-dir", str(self.directory),
                *self.experiment.command_overrides(self.variant, self.seed)]

    @property
    def finished(self) -> bool:
        return (self.directory / "final").is_dir() or self.archive.is_file()


def plan(names: Sequence[str], seeds: Sequence[int], out: Path, archive: Path = ARCHIVE) -> list[Run]:
    """Every run of the named experiments, seed by seed inside each variant."""
    return [Run(EXPERIMENTS[n], v, s, out / n / v.name / f"seed{s}", archive / n / v.name / f"seed{s}.jsonl.gz")
            for n in names for v in EXPERIMENTS[n].variants for s in seeds]


def resolved(run: Run) -> Any:
    """The run's config as its job resolves it (no Ray); raises ConfigError naming the key."""
    from apo_pipeline.launch import parse_args, resolve_config

    return resolve_config(run.variant.job, parse_args(run.variant.job, run.command[2:]))


def validate(runs: Sequence[Run]) -> None:
    """Resolve every run's config as its job will; a ConfigError names the run and key."""
    from apo_pipeline.config import ConfigError

    for run in runs:
        try:
            resolved(run)
        except ConfigError as exc:
            raise SystemExit(f"{run.directory}: {exc}") from None


def same_runs(runs: Sequence[Run]) -> dict[Run, Run]:
    """{run: an earlier run whose job resolves to the same config}: such a run (e.g. OnMC-PO's
    default arm, which three experiments share) is run once and copied."""
    first: dict[str, Run] = {}
    same = {}
    for run in runs:
        key = json.dumps(resolved(run).model_dump(mode="json"), sort_keys=True)
        if key in first:
            same[run] = first[key]
        else:
            first[key] = run
    return same


def copy_run(run: Run, original: Run) -> str:
    """`run` as the finished `original`: its archive copied, its directory a relative symlink to the
    original's (when that is on this machine)."""
    run.archive.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(original.archive, run.archive)
    if original.directory.is_dir() and not run.directory.exists():
        run.directory.parent.mkdir(parents=True, exist_ok=True)
        run.directory.symlink_to(os.path.relpath(original.directory, run.directory.parent), target_is_directory=True)
    return f"same as {original.directory}"


def execute(run: Run) -> str:
    """Run one job with its output in `<run>/job.log` and archive its metrics; "ok" or why it failed."""
    run.directory.mkdir(parents=True, exist_ok=True)
    with (run.directory / "job.log").open("a") as log:
        log.write(f"$ {shlex.join(run.command)}\n")
        log.flush()
        try:
            done = subprocess.run(run.command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=RUN_TIMEOUT_S, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except subprocess.TimeoutExpired:
            return f"timed out after {RUN_TIMEOUT_S} s"
    if done.returncode != 0:
        return f"exit {done.returncode} (see {run.directory / 'job.log'})"
    archive(run)
    return "ok"


def archive(run: Run) -> None:
    """Write the finished run's metrics.jsonl, gzipped, to its archive path."""
    run.archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = run.archive.with_name(run.archive.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:  # mtime 0: same metrics, same file
        f.write((run.directory / "metrics.jsonl").read_bytes())
    tmp.replace(run.archive)


def load_events(run: Run) -> list[Event]:
    """The run's metric events: from its archive, else from its directory (an unfinished run); []
    where it never wrote any."""
    from apo_pipeline.monitoring.metrics import read_metrics

    if run.archive.is_file():
        with gzip.open(run.archive, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    return read_metrics(run.directory) if (run.directory / "metrics.jsonl").is_file() else []
