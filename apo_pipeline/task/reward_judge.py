"""A pairwise judge over a scalar reward: Bradley-Terry preference probabilities or draws."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from apo_pipeline.seeds import derive_seed
from apo_pipeline.task.instructions import constraint_reward
from apo_pipeline.task.synthetic import Prompt, latent_reward

RewardFn = Callable[[Prompt, str], float]
JUDGE_MODES = ("prob", "sample")


BUILTIN_REWARDS: dict[str, RewardFn] = {"builtin": latent_reward, "builtin:constraints": constraint_reward}
# the reward with the ground truth of each built-in prompt source (reports use it as the reference)
REFERENCE_REWARDS = {"builtin": "builtin", "builtin:instructions": "builtin:constraints"}


def load_reward_fn(spec: str) -> RewardFn:
    """``"builtin"`` (the synthetic task's r*), ``"builtin:constraints"`` (the fraction of the
    prompt's constraints satisfied, task/instructions.py) or ``"package.module:function"``.

    Raises ValueError naming the spec when the module cannot be imported, the attribute
    is missing, or it is not callable.
    """
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    if spec.startswith("builtin:"):
        raise ValueError(f"reward function {spec!r}: unknown built-in; known: {', '.join(BUILTIN_REWARDS)}")
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"reward function {spec!r}: expected {' or '.join(BUILTIN_REWARDS)} or 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"reward function {spec!r}: cannot import module {module_name!r}: {err}"
        ) from err
    fn = getattr(module, attr, None)
    if fn is None:
        raise ValueError(
            f"reward function {spec!r}: module {module_name!r} has no attribute {attr!r}"
        )
    if not callable(fn):
        raise ValueError(
            f"reward function {spec!r}: {attr!r} is not callable ({type(fn).__name__})"
        )
    return fn


class BradleyTerryRewardJudge:
    """Judges ``a`` vs ``b`` for a prompt by ``P(a > b) = sigmoid(scale * (r(a) - r(b)))``.

    ``mode="prob"`` returns that probability; ``mode="sample"`` returns a Bernoulli draw
    (1.0 = a wins, 0.0 = b wins) from an RNG keyed by (seed, prompt, a, b): the same
    question always gets the same answer, whatever the call order, while the two
    presentation orders (a, b) and (b, a) are independent draws.
    """

    def __init__(
        self, reward_fn: RewardFn, scale: float = 10.0, mode: str = "prob", seed: int = 0
    ) -> None:
        if mode not in JUDGE_MODES:
            raise ValueError(f"judge mode must be one of {JUDGE_MODES}, got {mode!r}")
        if not scale > 0:
            raise ValueError(f"judge scale must be > 0, got {scale}")
        self.reward_fn = reward_fn
        self.scale = scale
        self.mode = mode
        self.seed = seed

    def prob(self, prompt: Prompt, a: str, b: str) -> float:
        """P(a preferred over b) in [0, 1]; NaN when a reward is not finite."""
        ra, rb = float(self.reward_fn(prompt, a)), float(self.reward_fn(prompt, b))
        z = self.scale * (ra - rb)
        if math.isnan(z):
            return math.nan
        return 0.5 * (1.0 + math.tanh(0.5 * z))

    def compare(self, prompt: Prompt, a: str, b: str) -> float | None:
        """The judgement: a probability or a 1.0/0.0 outcome by mode; None if not possible."""
        p = self.prob(prompt, a, b)
        if math.isnan(p):
            return None
        if self.mode == "prob":
            return p
        u = np.random.default_rng(derive_seed(self.seed, "reward-judge", prompt, a, b)).random()
        return 1.0 if u < p else 0.0

    def compare_batch(self, items: Sequence[tuple[Prompt, str, str]]) -> list[float | None]:
        """``compare`` over ``[(prompt, a, b), ...]`` (a `judge_backend.JudgeBackend`)."""
        return [self.compare(prompt, a, b) for prompt, a, b in items]

    def metrics(self) -> dict[str, Any]:
        """No counters of its own (the judge actor counts what it judged)."""
        return {}

    __call__ = compare
