"""`RoundLog`: the run's metrics events and stage timings, each placed at its round.

A loop's round unit ("segment" for OnMC-PO, "iteration" for APO and MC-PO) is bound once, so an
event of round 3 carries `segment: 3` (or `iteration: 3`) without every call site spelling it.
`train_fields` names a learner step's metrics as the fields of a `train` event.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from apo_pipeline.monitoring import MetricsLogger, StageTimer

TRAIN_FIELDS = {
    "loss": "loss", "margin": "margin", "accuracy": "accuracy", "rewards/chosen": "chosen_reward",
    "rewards/rejected": "rejected_reward", "lr": "lr", "grad_norm": "grad_norm", "mc/entropy": "mc_entropy",
    "perf/pairs_per_s": "pairs_per_s", "perf/tokens_per_s": "tokens_per_s", "bco/delta": "bco_delta",
}  # and every dyn/<a>/<b> metric as dyn_<a>_<b> (the dynamics probe, see `train_fields`)


def train_fields(metrics: dict[str, float]) -> dict[str, float]:
    """A train step's metrics as train-event fields: TRAIN_FIELDS renamed, dyn/<a>/<b> as dyn_<a>_<b>."""
    fields = {TRAIN_FIELDS[k]: v for k, v in metrics.items() if k in TRAIN_FIELDS}
    fields.update({k.replace("/", "_"): v for k, v in metrics.items() if k.startswith("dyn/")})
    return fields


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
