"""BCO's delta: the running mean of every implicit reward seen so far (pure Python).

Jung et al. (BCO) shift both halves of the loss by delta, the mean implicit reward; TRL's
BCOTrainer keeps it as `RunningMoments`: each training micro-batch first folds all its chosen and
rejected rewards (gathered over the processes) into a count-weighted mean, then uses that mean,
current batch included, as delta. `RunningMean` is that mean; the learner feeds it the sums and
counts of every rank (all-reduced) so all ranks hold the same value, and checkpoints `state()`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RunningMean:
    """Mean of every value folded in so far (0.0 before any); `count` values seen."""

    mean: float = 0.0
    count: int = 0

    def update(self, total: float, count: int) -> float:
        """Fold in `count` values summing to `total`; returns the new mean. count 0 changes nothing."""
        if count < 0:
            raise ValueError(f"RunningMean.update: count must be >= 0, got {count}")
        if count:
            self.count += count
            self.mean += (total - count * self.mean) / self.count
        return self.mean

    def state(self) -> dict[str, float | int]:
        """JSON-like state for a checkpoint."""
        return {"mean": self.mean, "count": self.count}

    @classmethod
    def from_state(cls, state: dict[str, float | int] | None) -> "RunningMean":
        """The mean saved by `state()` (a fresh one for None)."""
        return cls() if not state else cls(float(state["mean"]), int(state["count"]))
