"""Stage costs: how long one call of a stage takes on its pool of actors, and fitting them.

    seconds(call) = fixed + per_unit * units / actors

Units per stage (what `per_unit` is charged for):

| stage | one call | units | actors |
| --- | --- | --- | --- |
| generate | one batch of prompts (a round, or a chunk) | sampled candidates | generation engines |
| judge | one batch of prompts | ordered comparisons asked | judges that run |
| ref_logprobs | one batch of groups | sequences scored | learner ranks |
| train | one optimizer step | pairs (groups) in the step | learner ranks |
| sync | one weight sync | - | 1 |
| eval | one evaluation | held-out prompts | generation engines |
| eval_judge | the judge's share of an evaluation (modelled only) | comparisons asked | judges that run |
| checkpoint | one checkpoint | - | 1 |
| driver | the driver's bookkeeping between stages | prompts | 1 |

`per_unit` is seconds per unit on ONE actor, so a pool of N actors does N units in that time
(perfect data parallelism, the model's central assumption).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

STAGES = ("generate", "judge", "ref_logprobs", "train", "sync", "eval", "eval_judge", "checkpoint", "driver")
REL_TIE = 1e-9  # residuals this close (relative) count as equal when choosing a fit


@dataclass(frozen=True)
class StageCost:
    """seconds = fixed (per call) + per_unit (seconds per unit on one actor) * units / actors."""

    fixed: float = 0.0
    per_unit: float = 0.0

    def __post_init__(self) -> None:
        if self.fixed < 0 or self.per_unit < 0:
            raise ValueError(f"StageCost: negative cost ({self.fixed}, {self.per_unit})")

    def seconds(self, units: float = 0.0, actors: int = 1) -> float:
        """Wall seconds of one call over `units` shared by `actors` actors."""
        if actors < 1:
            raise ValueError(f"StageCost.seconds: actors must be >= 1, got {actors}")
        return self.fixed + self.per_unit * units / actors


@dataclass(frozen=True)
class StageRates:
    """A `StageCost` per stage (a stage not given costs nothing); `source` says measured or modelled."""

    costs: Mapping[str, StageCost] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.costs) - set(STAGES))
        if unknown:
            raise ValueError(f"StageRates: unknown stage(s) {unknown}; expected {', '.join(STAGES)}")

    def __getitem__(self, stage: str) -> StageCost:
        if stage not in STAGES:
            raise KeyError(f"unknown stage {stage!r}")
        return self.costs.get(stage, StageCost())


@dataclass(frozen=True)
class Sample:
    """One round's measurement of one stage: `calls` calls over `units_per_actor` units per actor."""

    calls: float
    units_per_actor: float
    seconds: float


def fit_cost(samples: Iterable[Sample]) -> StageCost:
    """Non-negative least squares of seconds ~ fixed * calls + per_unit * units_per_actor, on the
    relative error (each sample divided by its seconds), so short and long rounds weigh alike.

    Exact over the active sets of two coefficients. When the data cannot tell them apart (one
    ratio of units to calls, or no units at all), the rate (per_unit) is preferred, then the
    fixed cost: a stage measured at one size is assumed to scale with its work.
    """
    raw = [(s.calls, s.units_per_actor, s.seconds) for s in samples]
    if not raw:
        return StageCost()
    floor = 1e-3 * max(y for _, _, y in raw) + 1e-12
    rows = [(c / max(y, floor), x / max(y, floor), y / max(y, floor)) for c, x, y in raw]
    scc = sum(c * c for c, _, _ in rows)
    sxx = sum(x * x for _, x, _ in rows)
    scx = sum(c * x for c, x, _ in rows)
    scy = sum(c * y for c, _, y in rows)
    sxy = sum(x * y for _, x, y in rows)
    candidates: list[StageCost] = []
    if sxx > 0:
        candidates.append(StageCost(0.0, max(sxy / sxx, 0.0)))
    det = scc * sxx - scx * scx
    if det > 1e-12 * max(scc * sxx, 1e-300):
        fixed, per_unit = (sxx * scy - scx * sxy) / det, (scc * sxy - scx * scy) / det
        if fixed >= 0 and per_unit >= 0:
            candidates.append(StageCost(fixed, per_unit))
    if scc > 0:
        candidates.append(StageCost(max(scy / scc, 0.0), 0.0))
    if not candidates:
        return StageCost()

    def residual(cost: StageCost) -> float:
        return sum((y - cost.fixed * c - cost.per_unit * x) ** 2 for c, x, y in rows)

    best = min(residual(c) for c in candidates)
    scale = max(sum(y * y for _, _, y in rows), 1e-300)
    return next(c for c in candidates if residual(c) <= best + REL_TIE * scale)
