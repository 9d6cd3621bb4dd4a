"""Result type, registry and shared helpers of the preference losses.

Conventions (docs/DEVELOPING.md): log-probs are per-sequence sums over response tokens, in
nats; chosen [B], rejected [B] or [B, M]. Internally every batch is two-dimensional: chosen-side
tensors are [B, 1], rejected-side tensors [B, M] (M = 1 for a pair), so a loss function writes
its formula once and broadcasting covers M > 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

REQUIRED = object()
"""Default marking an option the caller must pass."""

COMMON_OPTIONS: dict[str, Any] = {
    "chosen_lengths": None,  # token counts of the chosen responses, [B]
    "rejected_lengths": None,  # token counts of the rejected responses, [B] or [B, M]
    "weights": None,  # per-example loss weights, [B]
    "pos_weight": 1.0,  # cDPO: gradient scale of the chosen (positive) log-probs
    "neg_weight": 1.0,  # cDPO: gradient scale of the rejected (negative) log-probs
}


@dataclass
class LossOutput:
    """`loss`: scalar mean over the batch (differentiable); `per_example`: [B] unweighted losses;
    `metrics`: floats (rewards/chosen, rewards/rejected, margin, accuracy, loss, loss-specific)."""

    loss: Tensor
    per_example: Tensor
    metrics: dict[str, float]


@dataclass
class PairTerms:
    """What a loss function returns: `losses` [B, 1] or [B, M] (one value per pair, or per prompt
    for natively multi-negative losses), the implicit rewards of chosen [B, 1] and rejected
    [B, M] that the standard metrics are computed from, and loss-specific metrics."""

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    metrics: dict[str, Tensor | float] = field(default_factory=dict)


@dataclass
class LossBatch:
    """One batch in the internal 2-D layout, with the options resolved (defaults filled in)."""

    name: str
    chosen: Tensor  # [B, 1]
    rejected: Tensor  # [B, M]
    ref_chosen: Tensor | None  # [B, 1]
    ref_rejected: Tensor | None  # [B, M]
    beta: float
    options: dict[str, Any]

    @property
    def chosen_logratio(self) -> Tensor:
        """log pi(y_w) - log pi_ref(y_w), [B, 1]."""
        return self.chosen - self.ref_chosen

    @property
    def rejected_logratio(self) -> Tensor:
        """log pi(y_l) - log pi_ref(y_l), [B, M]."""
        return self.rejected - self.ref_rejected

    @property
    def chosen_reward(self) -> Tensor:
        """Implicit reward r(y_w) = beta * log-ratio, [B, 1]."""
        return self.beta * self.chosen_logratio

    @property
    def rejected_reward(self) -> Tensor:
        """Implicit reward r(y_l) = beta * log-ratio, [B, M]."""
        return self.beta * self.rejected_logratio

    def require(self, option: str, why: str) -> Any:
        """The value of `option`, or a ValueError naming the option and this loss."""
        value = self.options.get(option)
        if value is None:
            raise ValueError(f"loss {self.name!r} needs option {option!r} ({why})")
        return value

    def chosen_side(self, option: str) -> Tensor:
        """A float or [B] tensor option as a tensor broadcastable to [B, 1]."""
        return _side_tensor(self, option, self.chosen.shape)

    def rejected_side(self, option: str) -> Tensor:
        """A float, [B] or [B, M] tensor option as a tensor broadcastable to [B, M]."""
        return _side_tensor(self, option, self.rejected.shape)

    def chosen_token_nll(self) -> Tensor:
        """Token-mean NLL of the chosen response, -log pi(y_w) / |y_w|, [B, 1] (nats/token)."""
        self.require("chosen_lengths", "token counts of the chosen responses")
        return -self.chosen / self.chosen_side("chosen_lengths")


def _side_tensor(batch: LossBatch, option: str, shape: torch.Size) -> Tensor:
    value = batch.options[option]
    like = batch.chosen
    if not torch.is_tensor(value):
        return torch.tensor(float(value), dtype=like.dtype, device=like.device)
    value = value.to(dtype=like.dtype, device=like.device)
    if value.dim() == 1:
        value = value.unsqueeze(-1)
    if value.dim() != 2 or value.shape[0] != shape[0] or value.shape[1] not in (1, shape[1]):
        raise ValueError(
            f"loss {batch.name!r}: option {option!r} has shape {tuple(batch.options[option].shape)}, "
            f"expected a float, [{shape[0]}] or {list(shape)}"
        )
    return value


LossFn = Callable[[LossBatch], PairTerms]


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: its function, its own options with defaults (REQUIRED = must be
    passed), whether it needs reference log-probs, and whether it handles M negatives
    natively (otherwise the per-pair losses are averaged over the M negatives)."""

    name: str
    fn: LossFn
    options: Mapping[str, Any]
    reference_free: bool
    native_multi_negative: bool


REGISTRY: dict[str, LossSpec] = {}


def register(
    name: str,
    *,
    options: Mapping[str, Any] | None = None,
    reference_free: bool = False,
    native_multi_negative: bool = False,
) -> Callable[[LossFn], LossFn]:
    """Decorator adding a loss function to the registry under `name`."""

    def add(fn: LossFn) -> LossFn:
        if name in REGISTRY:
            raise ValueError(f"loss {name!r} registered twice")
        clash = set(options or {}) & set(COMMON_OPTIONS)
        if clash:
            raise ValueError(f"loss {name!r} redeclares common option(s) {sorted(clash)}")
        REGISTRY[name] = LossSpec(name, fn, dict(options or {}), reference_free, native_multi_negative)
        return fn

    return add


def check_range(batch: LossBatch, option: str, low: float, high: float, *, closed_high: bool = False) -> float:
    """A float option checked to lie in [low, high) (or [low, high] with `closed_high`)."""
    value = float(batch.options[option])
    if not (low <= value < high or (closed_high and value == high)):
        bracket = "]" if closed_high else ")"
        raise ValueError(f"loss {batch.name!r}: option {option!r} must be in [{low}, {high}{bracket}, got {value}")
    return value


def add_chosen_nll(batch: LossBatch, losses: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """losses + sft_weight * token-mean NLL of y_w (RPO / CPO), and the NLL as metric sft_nll."""
    weight = check_range(batch, "sft_weight", 0.0, math.inf)
    if not weight:
        return losses, {}
    nll = batch.chosen_token_nll()
    return losses + weight * nll, {"sft_nll": nll}


def sigmoid_pair_loss(logits: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """-(1 - eps) log sigma(z) - eps log sigma(-z), elementwise (conservative DPO, eps = 0: DPO)."""
    loss = -torch.nn.functional.logsigmoid(logits)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * torch.nn.functional.logsigmoid(-logits)
    return loss


def scale_grad(x: Tensor, weight: float) -> Tensor:
    """Value-preserving gradient scaling: w * x + (1 - w) * x.detach() (cDPO coordination)."""
    if weight == 1.0:
        return x
    return weight * x + (1.0 - weight) * x.detach()
