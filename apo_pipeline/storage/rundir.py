"""Run directory layout and crash-safe file primitives.

    runs/<name>/
      config.yaml                 resolved config the run used
      iter_0003/ or seg_0003/     one folder per iteration (APO) or segment (OnMC-PO):
        rollouts.parquet judgements.parquet pairs.parquet
      checkpoints/<ckpt>/         complete checkpoints (see `checkpoint_io`); `.tmp-*` are half-written
      metrics.jsonl               one JSON event per line (see `monitoring.metrics`)
      LATEST                      name of the newest complete checkpoint, written last
      driver.json                 the driver's pid, heartbeat and end state (see `monitoring.run_state`)
      failures.jsonl              one line per actor failure the job restored from
      logs/                       driver.log and one <actor>.log per actor (monitoring.console: quiet)
      final/                      HF export of the final policy
      report/                     PNG plots and report.md

Every file is written to a temporary sibling (a name starting with ".") and renamed into place,
so globs such as `iter_*/rollouts.parquet` never see a partial file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

TABLES = ("rollouts", "judgements", "pairs")
RoundUnit = Literal["iteration", "segment"]
ROUND_PREFIX: dict[str, str] = {"iteration": "iter", "segment": "seg"}
_ROUND_RE = re.compile(r"^(iter|seg)_(\d{4,})$")


def write_fd(fd: int, data: bytes) -> None:
    """Write all of `data` to the open descriptor `fd` (the one low-level write every writer here uses)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_path(path: str | Path) -> None:
    """Flush a file's or a directory's metadata and contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_synced(path: str | Path, data: bytes) -> None:
    """Create/truncate `path`, write `data` and fsync it (not atomic; see `atomic_write_bytes`)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_fd(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; on success fsync it and rename it onto `path`.

    On an exception the temporary file is removed and `path` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (temporary sibling + fsync + rename + directory fsync)."""
    with atomic_path(path) as tmp:
        write_file_synced(tmp, data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


@dataclass(frozen=True)
class RoundFiles:
    """The tables one iteration/segment produced. `tables` maps table name -> existing Parquet path."""

    unit: RoundUnit
    index: int
    path: Path
    tables: dict[str, Path]


def _under(name: str) -> property:
    """A read-only path `<run>/<name>` of a `RunDir`."""
    return property(lambda self: self.root / name, doc=f"`<run>/{name}`")


class RunDir:
    """Paths of one run directory; nothing is created until a writer needs it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @property
    def name(self) -> str:
        return self.root.name

    config_path = _under("config.yaml")
    metrics_path = _under("metrics.jsonl")
    checkpoints_dir = _under("checkpoints")
    latest_path = _under("LATEST")
    driver_path = _under("driver.json")
    failures_path = _under("failures.jsonl")
    logs_dir = _under("logs")
    final_dir = _under("final")
    report_dir = _under("report")

    def round_dir(self, index: int, unit: RoundUnit = "iteration") -> Path:
        """`iter_0003/` (unit="iteration") or `seg_0003/` (unit="segment")."""
        if unit not in ROUND_PREFIX:
            raise ValueError(f"unit: expected one of {', '.join(ROUND_PREFIX)}, got {unit!r}")
        if not isinstance(index, int) or index < 0:
            raise ValueError(f"index: expected an int >= 0, got {index!r}")
        return self.root / f"{ROUND_PREFIX[unit]}_{index:04d}"

    def table_path(self, table: str, index: int, unit: RoundUnit = "iteration") -> Path:
        """Parquet path of `table` (rollouts | judgements | pairs) for one iteration/segment."""
        if table not in TABLES:
            raise ValueError(f"table: expected one of {', '.join(TABLES)}, got {table!r}")
        return self.round_dir(index, unit) / f"{table}.parquet"

    def rounds(self) -> list[RoundFiles]:
        """Existing iteration/segment folders in (unit, index) order, with the tables each holds."""
        units = {prefix: unit for unit, prefix in ROUND_PREFIX.items()}
        found = []
        if self.root.is_dir():
            for child in self.root.iterdir():
                match = _ROUND_RE.match(child.name)
                if match and child.is_dir():
                    tables = {t: child / f"{t}.parquet" for t in TABLES if (child / f"{t}.parquet").is_file()}
                    found.append(RoundFiles(units[match.group(1)], int(match.group(2)), child, tables))
        return sorted(found, key=lambda r: (r.unit, r.index))

    def saved_state(self) -> list[str]:
        """What a re-run would pick up, relative to the root: committed checkpoints (a directory
        with a manifest) and round folders holding tables. Empty when nothing was ever trained or
        stored here (a failed start leaves only config.yaml, metrics.jsonl and logs)."""
        found = []
        if self.checkpoints_dir.is_dir():
            found += sorted(
                f"checkpoints/{c.name}" for c in self.checkpoints_dir.iterdir()
                if not c.name.startswith(".") and (c / "manifest.json").is_file()
            )
        found += [r.path.name for r in self.rounds() if r.tables]
        return found

    def table_files(self, table: str) -> list[Path]:
        """Every existing Parquet file of `table`, in round order (e.g. `data_files` for `datasets`)."""
        if table not in TABLES:
            raise ValueError(f"table: expected one of {', '.join(TABLES)}, got {table!r}")
        return [r.tables[table] for r in self.rounds() if table in r.tables]


def create_run_dir(root: str | Path, name: str, config: Any | None = None) -> RunDir:
    """Create `root/name/` (idempotent, so a re-run resumes in place) and write config.yaml.

    `config` is a pydantic model (dumped in JSON mode) or a plain mapping; None leaves config.yaml as is.
    """
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ValueError(f"name: a run name must be one path component, got {name!r}")
    run = RunDir(Path(root) / name)
    run.root.mkdir(parents=True, exist_ok=True)
    if config is not None:
        if hasattr(config, "model_dump"):
            tree = config.model_dump(mode="json")
        elif isinstance(config, Mapping):
            tree = dict(config)
        else:
            raise TypeError(f"config: expected a pydantic model or a mapping, got {type(config).__name__}")
        atomic_write_text(run.config_path, yaml.safe_dump(tree, sort_keys=False))
    return run
