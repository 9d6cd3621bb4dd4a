"""Metrics sink: `metrics.jsonl` (always), Ray metrics (Prometheus) and TensorBoard (optional).

metrics.jsonl holds one JSON object per line with at least "event" (str) and "time" (unix seconds).
Events the report reads: "eval", "train", "stage", "judge" (field lists in docs); others are kept
and ignored. Numeric fields are mirrored as Ray metrics named `apo_<event>_<field>` (Counters for
per-batch counts, Gauges otherwise) tagged with `run` (and `stage` for stage events).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path
from typing import IO, Any

from apo_pipeline.storage.rundir import atomic_write_bytes

log = logging.getLogger(__name__)

COUNTER_FIELDS: dict[str, frozenset[str]] = {
    "judge": frozenset({"comparisons", "asked", "scored", "failed", "partial", "retried", "ties", "overlong", "errors"}),
}
TAG_FIELDS: dict[str, tuple[str, ...]] = {"stage": ("stage",)}
STEP_KEYS = ("step", "iteration", "segment")


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


def _metric_name(event: str, key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", f"apo_{event}_{key}")


class MetricsLogger:
    """Appends events to `<run_dir>/metrics.jsonl` and mirrors numeric fields.

    `ray_metrics`: mirror as `ray.util.metrics` (created lazily, only once Ray is initialised).
    `tensorboard`: also write scalars `<event>/<field>` under `<run_dir>/tensorboard`; needs the
    `tensorboard` package (a clear error at construction if it is missing).
    """

    def __init__(self, run_dir: str | Path, ray_metrics: bool = True, tensorboard: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self.ray_metrics = ray_metrics
        self.lines = self._complete_lines()
        self.opened_at = self.lines  # lines before this are an earlier process's
        self._file: IO[str] | None = self.path.open("a", encoding="utf-8")
        self._ray: dict[str, Any] = {}
        self._counts: dict[str, int] = {}
        self._tb = self._open_tensorboard() if tensorboard else None

    def _open_tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise RuntimeError(
                "monitoring.tensorboard=true needs the tensorboard package: "
                "pip install 'apo-pipeline[tensorboard]' (or set monitoring.tensorboard=false)"
            ) from exc
        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def log(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one event line (flushed) and mirror its numeric fields; returns the record written."""
        if self._file is None:
            raise RuntimeError(f"MetricsLogger for {self.path} is closed")
        record = {"event": event, "time": time.time(), **{k: _jsonable(v) for k, v in fields.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.lines += 1
        numeric = {k: v for k, v in record.items() if k not in ("event", "time") and _is_number(v)}
        if numeric and self.ray_metrics:
            self._mirror_ray(event, record, numeric)
        if numeric and self._tb is not None:
            self._mirror_tensorboard(event, record, numeric)
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

    def _mirror_ray(self, event: str, record: dict[str, Any], numeric: dict[str, float]) -> None:
        import ray

        if not ray.is_initialized():
            return
        from ray.util.metrics import Counter, Gauge

        tag_keys = ("run", *TAG_FIELDS.get(event, ()))
        tags = {"run": self.run_dir.name, **{k: str(record.get(k, "")) for k in tag_keys[1:]}}
        counters = COUNTER_FIELDS.get(event, frozenset())
        for key, value in numeric.items():
            name = _metric_name(event, key)
            metric = self._ray.get(name)
            if metric is None:
                cls = Counter if key in counters else Gauge
                metric = self._ray[name] = cls(name, description=f"{event}.{key} (apo-pipeline)", tag_keys=tag_keys)
            if key not in counters:
                metric.set(float(value), tags=tags)
            elif value > 0:
                metric.inc(float(value), tags=tags)

    def _mirror_tensorboard(self, event: str, record: dict[str, Any], numeric: dict[str, float]) -> None:
        step_key = next((k for k in STEP_KEYS if k in numeric), None)
        if step_key is None:
            step = self._counts[event] = self._counts.get(event, -1) + 1
        else:
            step = int(numeric[step_key])
        prefix = f"{event}/{record['stage']}" if event == "stage" and "stage" in record else event
        for key, value in numeric.items():
            if key != step_key:
                self._tb.add_scalar(f"{prefix}/{key}", value, global_step=step)

    def close(self) -> None:
        """Flush and close the file (and TensorBoard writer); idempotent."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
