"""`preference_loss(name, ...)`: option checking, input validation, cDPO weighting, the
multi-negative reduction and the standard metrics around the registered loss functions."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from apo_pipeline.losses.base import (
    COMMON_OPTIONS,
    REGISTRY,
    REQUIRED,
    LossBatch,
    LossOutput,
    LossSpec,
    PairTerms,
    scale_grad,
)


def list_losses() -> list[str]:
    """Names of every registered loss, sorted."""
    return sorted(REGISTRY)


def preference_loss(
    name: str,
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    *,
    beta: float,
    **options: Any,
) -> LossOutput:
    """Preference loss `name` on per-sequence summed log-probs (nats).

    Shapes: chosen [B]; rejected [B] or [B, M]; ref_* the same as their policy counterparts, or
    None for reference-free losses (simpo, cpo). Options: the common ones (chosen_lengths [B],
    rejected_lengths [B] / [B, M] token counts; weights [B]; pos_weight / neg_weight for cDPO)
    and the loss's own (see docs/algorithms.md). Losses that are pairwise are averaged over the
    M negatives; `loss` = mean over the batch of weights * per_example.
    """
    spec = loss_spec(name)
    resolved = _resolve_options(spec, options)
    if not isinstance(beta, (int, float)) or not beta > 0:
        raise ValueError(f"loss {name!r}: beta must be a positive float, got {beta!r}")
    chosen, rejected = _check_logps(name, chosen_logps, rejected_logps)
    refs = _check_refs(spec, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    _check_lengths(name, resolved, chosen_logps, rejected_logps)
    batch = LossBatch(
        name=name,
        chosen=scale_grad(chosen, float(resolved["pos_weight"])),
        rejected=scale_grad(rejected, float(resolved["neg_weight"])),
        ref_chosen=refs[0],
        ref_rejected=refs[1],
        beta=float(beta),
        options=resolved,
    )
    terms = spec.fn(batch)
    per_example = terms.losses.mean(dim=-1)
    weights = _weights(name, resolved["weights"], per_example)
    loss = (per_example * weights).mean() if weights is not None else per_example.mean()
    return LossOutput(loss=loss, per_example=per_example, metrics=_metrics(loss, terms))


def loss_spec(name: str) -> LossSpec:
    """The registered spec of `name`: its own options and defaults, reference_free, native_multi_negative."""
    if name not in REGISTRY:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(list_losses())}")
    return REGISTRY[name]


def _resolve_options(spec: LossSpec, options: dict[str, Any]) -> dict[str, Any]:
    accepted = {**COMMON_OPTIONS, **spec.options}
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"loss {spec.name!r}: unknown option(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(sorted(accepted))}"
        )
    resolved = {**accepted, **options}
    missing = sorted(k for k, v in resolved.items() if v is REQUIRED)
    if missing:
        raise ValueError(f"loss {spec.name!r}: missing required option(s) {', '.join(map(repr, missing))}")
    return resolved


def _check_logps(name: str, chosen: Tensor, rejected: Tensor) -> tuple[Tensor, Tensor]:
    """Validate [B] / [B] or [B, M] and return the 2-D views [B, 1] / [B, M]."""
    if not torch.is_tensor(chosen) or chosen.dim() != 1:
        raise ValueError(f"loss {name!r}: chosen_logps must be a [B] tensor, got {_shape(chosen)}")
    if not torch.is_tensor(rejected) or rejected.dim() not in (1, 2) or rejected.shape[0] != chosen.shape[0]:
        raise ValueError(
            f"loss {name!r}: rejected_logps must be [B] or [B, M] with B = {chosen.shape[0]}, got {_shape(rejected)}"
        )
    if rejected.dim() == 2 and rejected.shape[1] == 0:
        raise ValueError(f"loss {name!r}: rejected_logps has M = 0 negatives")
    return chosen.unsqueeze(-1), _as_2d(rejected)


def _check_refs(
    spec: LossSpec, chosen: Tensor, rejected: Tensor, ref_chosen: Tensor | None, ref_rejected: Tensor | None
) -> tuple[Tensor | None, Tensor | None]:
    if ref_chosen is None or ref_rejected is None:
        if not spec.reference_free:
            missing = "ref_chosen_logps" if ref_chosen is None else "ref_rejected_logps"
            raise ValueError(f"loss {spec.name!r} needs reference log-probs; {missing} is None")
        return None, None
    for label, ref, pol in (("ref_chosen_logps", ref_chosen, chosen), ("ref_rejected_logps", ref_rejected, rejected)):
        if not torch.is_tensor(ref) or ref.shape != pol.shape:
            raise ValueError(f"loss {spec.name!r}: {label} has shape {_shape(ref)}, expected {tuple(pol.shape)}")
    return ref_chosen.unsqueeze(-1).to(chosen.dtype), _as_2d(ref_rejected).to(chosen.dtype)


def _check_lengths(name: str, options: dict[str, Any], chosen: Tensor, rejected: Tensor) -> None:
    for key, like in (("chosen_lengths", chosen), ("rejected_lengths", rejected)):
        value = options[key]
        if value is None:
            continue
        if not torch.is_tensor(value) or value.shape != like.shape:
            raise ValueError(f"loss {name!r}: option {key!r} has shape {_shape(value)}, expected {tuple(like.shape)}")
        if bool((value <= 0).any()):
            raise ValueError(f"loss {name!r}: option {key!r} must be positive token counts")


def _weights(name: str, weights: Tensor | None, per_example: Tensor) -> Tensor | None:
    if weights is None:
        return None
    if not torch.is_tensor(weights) or weights.shape != per_example.shape:
        expected = tuple(per_example.shape)
        raise ValueError(f"loss {name!r}: option 'weights' has shape {_shape(weights)}, expected {expected}")
    if bool((weights < 0).any()):
        raise ValueError(f"loss {name!r}: option 'weights' must be non-negative")
    return weights.to(per_example.dtype)


def _metrics(loss: Tensor, terms: PairTerms) -> dict[str, float]:
    chosen = terms.chosen_rewards.detach()
    rejected = terms.rejected_rewards.detach()
    margin = chosen - rejected
    metrics = {
        "loss": float(loss.detach()),
        "rewards/chosen": float(chosen.mean()),
        "rewards/rejected": float(rejected.mean()),
        "margin": float(margin.mean()),
        "accuracy": float((margin > 0).to(chosen.dtype).mean()),
    }
    for key, value in terms.metrics.items():
        metrics[key] = float(value.detach().mean()) if torch.is_tensor(value) else float(value)
    return metrics


def _as_2d(rejected: Tensor) -> Tensor:
    """[B] -> [B, 1]; [B, M] unchanged."""
    return rejected if rejected.dim() == 2 else rejected.unsqueeze(-1)


def _shape(x: Any) -> str:
    return str(tuple(x.shape)) if torch.is_tensor(x) else type(x).__name__
