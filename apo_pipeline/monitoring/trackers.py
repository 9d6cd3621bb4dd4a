"""Where `MetricsLogger` mirrors each event besides metrics.jsonl: one `Tracker` per sink.

- `RayMetrics`: `ray.util.metrics` (Prometheus, the Ray dashboard), `apo_<event>_<field>` tagged
  with `run` (and `stage` for stage events); Counters for the judge's per-batch counts, Gauges
  otherwise. Created lazily, only once Ray is initialised.
- `TensorBoard`: scalars `<event>/<field>` (`stage/<stage>/<field>`) under `<run>/tensorboard`.
- `Wandb`: the same names in a Weights & Biases run under `<run>/wandb`, offline by default
  (`wandb sync <run>/wandb/offline-run-*` uploads it later); each event's charts use its own step
  (`train/step`, `eval/iteration`, ...). A resumed run continues the same W&B run id.

A tracker sees `(event, record, numeric)`: the full record written to metrics.jsonl and its
finite numeric fields.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any, Protocol

COUNTER_FIELDS: dict[str, frozenset[str]] = {
    "judge": frozenset({"comparisons", "asked", "scored", "failed", "partial", "retried", "ties", "overlong", "errors"}),
}
TAG_FIELDS: dict[str, tuple[str, ...]] = {"stage": ("stage",)}
STEP_KEYS = ("step", "iteration", "segment")
WANDB_ID_FILE = "apo-run-id"


class Tracker(Protocol):
    def log(self, event: str, record: dict[str, Any], numeric: dict[str, float]) -> None: ...
    def close(self) -> None: ...


def _missing(key: str, package: str, extra: str) -> RuntimeError:
    return RuntimeError(
        f"monitoring.{key}=true needs the {package} package: pip install 'apo-pipeline[{extra}]' "
        f"(or set monitoring.{key}=false)"
    )


def metric_name(event: str, key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", f"apo_{event}_{key}")


def scalar_prefix(event: str, record: dict[str, Any]) -> str:
    """`<event>`, or `stage/<stage>` for stage events (one chart group per stage)."""
    return f"{event}/{record['stage']}" if event == "stage" and "stage" in record else event


def step_key(numeric: dict[str, float]) -> str | None:
    """The field that orders an event's values: step, else iteration, else segment (None: no such field)."""
    return next((k for k in STEP_KEYS if k in numeric), None)


class RayMetrics:
    """Mirror into `ray.util.metrics`; a no-op while Ray is not initialised."""

    def __init__(self, run_name: str) -> None:
        self.run_name = run_name
        self.metrics: dict[str, Any] = {}

    def log(self, event: str, record: dict[str, Any], numeric: dict[str, float]) -> None:
        import ray

        if not ray.is_initialized():
            return
        from ray.util.metrics import Counter, Gauge

        tag_keys = ("run", *TAG_FIELDS.get(event, ()))
        tags = {"run": self.run_name, **{k: str(record.get(k, "")) for k in tag_keys[1:]}}
        counters = COUNTER_FIELDS.get(event, frozenset())
        for key, value in numeric.items():
            name = metric_name(event, key)
            metric = self.metrics.get(name)
            if metric is None:
                cls = Counter if key in counters else Gauge
                metric = self.metrics[name] = cls(name, description=f"{event}.{key} (apo-pipeline)", tag_keys=tag_keys)
            if key not in counters:
                metric.set(float(value), tags=tags)
            elif value > 0:
                metric.inc(float(value), tags=tags)

    def close(self) -> None:
        """Nothing to flush: Ray exports the metrics itself."""


class TensorBoard:
    """Scalars under `<run_dir>/tensorboard`; events without a step field count their own steps."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise _missing("tensorboard", "tensorboard", "tensorboard") from exc
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.counts: dict[str, int] = {}

    def log(self, event: str, record: dict[str, Any], numeric: dict[str, float]) -> None:
        key = step_key(numeric)
        if key is None:
            step = self.counts[event] = self.counts.get(event, -1) + 1
        else:
            step = int(numeric[key])
        prefix = scalar_prefix(event, record)
        for name, value in numeric.items():
            if name != key:
                self.writer.add_scalar(f"{prefix}/{name}", value, global_step=step)

    def close(self) -> None:
        self.writer.close()


class Wandb:
    """A W&B run in `<run_dir>/wandb` (`mode`: offline or online) with the job's config.

    The run id is kept in `<run_dir>/wandb/apo-run-id`, so a resumed job logs into the same run.
    W&B's console capture is off: the run's own logs are in `<run_dir>/logs`.
    """

    def __init__(self, run_dir: Path, *, project: str, mode: str, config: dict[str, Any] | None = None) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise _missing("wandb", "wandb", "wandb") from exc
        folder = run_dir / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / WANDB_ID_FILE
        if not id_file.is_file():
            id_file.write_text(uuid.uuid4().hex[:12])
        self.run = wandb.init(
            project=project, name=run_dir.name, id=id_file.read_text().strip(), resume="allow", dir=str(run_dir),
            mode=mode, config=config, settings=wandb.Settings(console="off", quiet=True),
        )
        self.steps: dict[str, str] = {}
        self.counts: dict[str, int] = {}

    def _step_metric(self, prefix: str, key: str | None) -> str:
        """`<prefix>/<key>` (declared once as the x axis of every `<prefix>/*` chart)."""
        name = f"{prefix}/{key or 'n'}"
        if self.steps.get(prefix) != name:
            self.run.define_metric(name)
            self.run.define_metric(f"{prefix}/*", step_metric=name)
            self.steps[prefix] = name
        return name

    def log(self, event: str, record: dict[str, Any], numeric: dict[str, float]) -> None:
        prefix = scalar_prefix(event, record)
        key = step_key(numeric)
        x = self._step_metric(prefix, key)
        if key is None:
            self.counts[prefix] = self.counts.get(prefix, -1) + 1
        values = {f"{prefix}/{name}": value for name, value in numeric.items()}
        values[x] = numeric[key] if key else self.counts[prefix]
        self.run.log(values)

    def close(self) -> None:
        self.run.finish()
