"""What a judge backend is: the one interface the `judge-<i>` actor drives (no Ray, no vLLM).

Two implementations: `task.reward_judge.BradleyTerryRewardJudge` (`judge.backend: reward`, a
reward function through Bradley-Terry) and `engine.llm_judge.LLMJudgeBackend` (`llm`, an
instruct model on vLLM read through label log-probs). `engine/judge.py` builds one of them and
runs `apo_pipeline.ranking` over its `compare_batch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

Comparison = tuple[Any, str, str]  # (prompt: text or chat messages, response a, response b)


@runtime_checkable
class JudgeBackend(Protocol):
    """Pairwise preference probabilities for batches of comparisons."""

    def compare_batch(self, items: Sequence[Comparison]) -> list[float | None]:
        """P(a beats b) in [0, 1] per (prompt, a, b), in order; None where it could not be scored
        (counted by the backend and by the ranking, never guessed)."""
        ...

    def metrics(self) -> dict[str, Any]:
        """The backend's counters since start (numbers) and start-up choices (anything else)."""
        ...
