"""Plain data records that flow between the actors (no Ray, no torch).

A `Rollout` is one prompt with its K sampled candidates; a `TrainGroup` is what the learner
trains on: the token ids of one prompt and its candidates, which one is preferred, and the
reference log-probs stored with the data (so no reference model stays resident).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Candidate:
    """One sampled completion. `logprob` is the summed sampling log-prob of `token_ids` (nats)."""

    token_ids: list[int]
    text: str
    finish_reason: str
    logprob: float
    temperature: float


@dataclass
class Rollout:
    """One prompt and its candidates, in the order the pool returned them (grouped by temperature).

    `prompt` is the text the policy saw (a conversation rendered with its chat template);
    `instruction` is the prompt as written (a conversation's last user message), what judges and
    rewards read (`judge_prompt`). `instruction` is not stored in tables ("" after a reload)."""

    prompt: str
    prompt_ids: list[int]
    candidates: list[Candidate]
    prompt_index: int = -1
    instruction: str = ""

    @property
    def judge_prompt(self) -> str:
        """The prompt as the judge and the reward see it: `instruction`, else `prompt`."""
        return self.instruction or self.prompt


@dataclass
class TrainGroup:
    """A prompt with K >= 2 candidates for the learner.

    `ref_logps[k]` is log pi_ref(candidate k | prompt) summed over response tokens; `win_probs[k]`
    (optional, SPPO) is the judge's estimate P(candidate k beats the policy).
    """

    prompt_ids: list[int]
    candidate_ids: list[list[int]]
    preferred: int
    ref_logps: list[float] = field(default_factory=list)
    win_probs: list[float] | None = None

    def __post_init__(self) -> None:
        k = len(self.candidate_ids)
        if k < 2:
            raise ValueError(f"TrainGroup needs at least 2 candidates, got {k}")
        if not 0 <= self.preferred < k:
            raise ValueError(f"preferred index {self.preferred} outside 0..{k - 1}")
        if self.ref_logps and len(self.ref_logps) != k:
            raise ValueError(f"ref_logps has {len(self.ref_logps)} entries for {k} candidates")
