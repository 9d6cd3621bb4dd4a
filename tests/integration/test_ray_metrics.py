"""`MetricsLogger` mirrors events into Ray's metrics (`monitoring.trackers.RayMetrics`) on a real
local Ray: gauges for values, counters for counts, tagged by run (and stage)."""

from __future__ import annotations

import pytest
from ray.util import metrics

from apo_pipeline.monitoring import MetricsLogger

pytestmark = pytest.mark.slow


def test_ray_metrics_mirror(tmp_path, monkeypatch, ray_session) -> None:
    calls = []

    def spy(cls: type, method: str) -> None:
        real = getattr(cls, method)

        def recorded(self, value, tags=None):
            calls.append((self.info["name"], method, value, tags))
            return real(self, value, tags=tags)

        monkeypatch.setattr(cls, method, recorded)

    spy(metrics.Gauge, "set")
    spy(metrics.Counter, "inc")
    with MetricsLogger(tmp_path / "myrun", ray_metrics=True) as logger:
        logger.log("train", step=3, loss=0.5, flag=True, nan=float("nan"))
        logger.log("stage", stage="judge", seconds=2.0, iteration=1)
        logger.log("judge", asked=6, failed=0, ties=2)
        infos = {name: (type(m).__name__, m.info["tag_keys"]) for name, m in logger.trackers[0].metrics.items()}
    assert infos == {
        "apo_train_step": ("Gauge", ("run",)), "apo_train_loss": ("Gauge", ("run",)),
        "apo_stage_seconds": ("Gauge", ("run", "stage")), "apo_stage_iteration": ("Gauge", ("run", "stage")),
        "apo_judge_asked": ("Counter", ("run",)), "apo_judge_failed": ("Counter", ("run",)),
        "apo_judge_ties": ("Counter", ("run",)),
    }
    assert ("apo_train_loss", "set", 0.5, {"run": "myrun"}) in calls
    assert ("apo_stage_seconds", "set", 2.0, {"run": "myrun", "stage": "judge"}) in calls
    assert ("apo_judge_asked", "inc", 6.0, {"run": "myrun"}) in calls
    assert not [c for c in calls if c[0] == "apo_judge_failed"]  # zero counts are not increments
