"""Metrics (metrics.jsonl and the trackers: Ray metrics, TensorBoard, W&B), stage timings,
progress, the quiet console, per-actor logs and the run's liveness record."""

from apo_pipeline.monitoring.metrics import MetricsLogger, open_run_metrics, read_metrics
from apo_pipeline.monitoring.stages import STAGES, StageTimer, progress

__all__ = ["STAGES", "MetricsLogger", "StageTimer", "open_run_metrics", "progress", "read_metrics"]
