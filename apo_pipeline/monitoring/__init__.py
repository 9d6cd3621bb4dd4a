"""Metrics (metrics.jsonl, Ray metrics, TensorBoard), stage timings and progress bars."""

from apo_pipeline.monitoring.metrics import MetricsLogger, read_metrics
from apo_pipeline.monitoring.stages import STAGES, StageTimer, progress

__all__ = ["STAGES", "MetricsLogger", "StageTimer", "progress", "read_metrics"]
