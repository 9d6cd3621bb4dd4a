"""The one metrics interface: `MetricsLogger.log(event, **fields)` writes `metrics.jsonl` and
mirrors the numeric fields into every tracker (`monitoring.trackers`: Ray metrics, TensorBoard,
Weights & Biases) and the quiet console.

metrics.jsonl holds one JSON object per line with at least "event" (str) and "time" (unix seconds).
Events the report reads: "eval", "train", "stage", "judge" (field lists in docs); others are kept
and ignored.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from apo_pipeline.monitoring.trackers import RayMetrics, TensorBoard, Tracker, Wandb
from apo_pipeline.storage.rundir import atomic_write_bytes

if TYPE_CHECKING:
    from apo_pipeline.config import BaseJobConfig

log = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    """Plain JSON value: numpy / torch values -> numbers or lists, non-finite floats -> None, others -> str."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class MetricsLogger:
    """Appends events to `<run_dir>/metrics.jsonl` and mirrors numeric fields into `trackers`.

    `ray_metrics` / `tensorboard` add those trackers (`monitoring.trackers`); TensorBoard needs the
    `tensorboard` package (a clear error at construction if it is missing). `close()` closes every
    tracker.
    """

    def __init__(
        self, run_dir: str | Path, ray_metrics: bool = True, tensorboard: bool = False, trackers: Iterable[Tracker] = ()
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self.lines = self._complete_lines()
        self.opened_at = self.lines  # lines before this are an earlier process's
        self.trackers: list[Tracker] = [
            *([RayMetrics(self.run_dir.name)] if ray_metrics else []),
            *([TensorBoard(self.run_dir)] if tensorboard else []),
            *trackers,
        ]
        self._file: IO[str] | None = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()  # a streamed round logs from its stage threads

    def log(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one event line (flushed) and mirror its numeric fields; returns the record written."""
        if self._file is None:
            raise RuntimeError(f"MetricsLogger for {self.path} is closed")
        with self._lock:
            record = {"event": event, "time": time.time(), **{k: _jsonable(v) for k, v in fields.items()}}
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
            self.lines += 1
        numeric = {k: v for k, v in record.items() if k not in ("event", "time") and _is_number(v)}
        for tracker in self.trackers:
            tracker.log(event, record, numeric)
        return record

    def _complete_lines(self) -> int:
        """Lines already in the file; a torn last line (a run killed mid-write) is ended first, so
        new events never merge into it (`read_metrics` skips it)."""
        if not self.path.is_file():
            return 0
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("ab") as f:
                f.write(b"\n")
            data += b"\n"
        return data.count(b"\n")

    def rewind(self, lines: int) -> int:
        """Keep the first `lines` lines (what a checkpoint recorded; 0 for a run that restarts from
        scratch) and the lines this logger wrote itself; move the others, written by an attempt
        that died after that point, to `metrics.discarded.jsonl`. Returns how many moved.

        After a resume, metrics.jsonl then reads as if the run had never stopped.
        """
        if self._file is None:
            raise RuntimeError(f"MetricsLogger for {self.path} is closed")
        self._file.close()
        every = self.path.read_bytes().splitlines(keepends=True)
        cut = min(lines, self.opened_at)
        head, stale, mine = every[:cut], every[cut:self.opened_at], every[self.opened_at:]
        if stale:
            with (self.run_dir / "metrics.discarded.jsonl").open("ab") as f:
                f.writelines(stale)
            atomic_write_bytes(self.path, b"".join(head + mine))
        self._file = self.path.open("a", encoding="utf-8")
        self.opened_at = len(head)
        self.lines = len(head) + len(mine)
        return len(stale)

    def close(self) -> None:
        """Flush and close the file and every tracker; idempotent."""
        if self._file is not None:
            self._file.close()
            self._file = None
            for tracker in self.trackers:
                tracker.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_run_metrics(run_dir: Path, cfg: "BaseJobConfig", console: Tracker | None = None) -> MetricsLogger:
    """The job's MetricsLogger: the trackers `cfg.monitoring` asks for, W&B with the job's config,
    and `console` (the quiet console) last."""
    mon = cfg.monitoring
    extra: list[Tracker] = []
    if mon.wandb:
        extra.append(Wandb(run_dir, project=mon.wandb_project, mode=mon.wandb_mode, config=cfg.model_dump(mode="json")))
    if console is not None:
        extra.append(console)
    return MetricsLogger(run_dir, ray_metrics=mon.ray_metrics, tensorboard=mon.tensorboard, trackers=extra)


def read_metrics(path: str | Path, event: str | None = None) -> list[dict[str, Any]]:
    """Events of a metrics.jsonl (or of `<run_dir>/metrics.jsonl`), optionally only one kind.

    A truncated last line (a crash mid-write) is skipped silently; other bad lines with a warning.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    events = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if n < len(lines):
                log.warning("%s line %d: not JSON, skipped", path, n)
            continue
        if not isinstance(record, dict) or "event" not in record:
            log.warning("%s line %d: no 'event' field, skipped", path, n)
            continue
        if event is None or record["event"] == event:
            events.append(record)
    return events
