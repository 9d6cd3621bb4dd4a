"""`RoundLog`: the run's metrics events and stage timings, each placed at its round.

A loop's round unit ("segment" for OnMC-PO, "iteration" for APO and MC-PO) is bound once, so an
event of round 3 carries `segment: 3` (or `iteration: 3`) without every call site spelling it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from apo_pipeline.monitoring import MetricsLogger, StageTimer


def where(unit: str | None, index: int, chunk: int | None) -> dict[str, int]:
    """An event's position fields: {unit: index} (no unit: none), plus `chunk` in a streamed round."""
    return {**({unit: index} if unit else {}), **({"chunk": chunk} if chunk is not None else {})}


class RoundLog:
    """`metrics` events and `timer` stages of a run whose rounds are counted in `unit`."""

    def __init__(self, metrics: MetricsLogger, timer: StageTimer, unit: str) -> None:
        self.metrics = metrics
        self.timer = timer
        self.unit = unit

    def event(self, name: str, index: int, chunk: int | None = None, **fields: Any) -> dict[str, Any]:
        """One `name` event of round `index` (and streamed `chunk`): {unit: index, chunk, **fields}."""
        return self.metrics.log(name, **where(self.unit, index, chunk), **fields)

    def stage(self, name: str, index: int, chunk: int | None = None, **fields: Any) -> AbstractContextManager[dict[str, Any]]:
        """`StageTimer.stage` of round `index` (and streamed `chunk`); yields the dict of extra fields."""
        return self.timer.stage(name, **where(self.unit, index, chunk), **fields)
