"""Gradient dynamics of DPO (seed 003, "What is preference optimization doing, how and why?").

grad L_dpo = -(beta / B) sum_i sigma(-h_i) [grad log pi(y_w,i) - grad log pi(y_l,i)], with
h_i = beta (log-ratio(y_w,i) - log-ratio(y_l,i)). Positive learning (POS) is the
grad log pi(y_w) part, negative learning (NEG) the -grad log pi(y_l) part, and sigma(-h) the loss
reweighting. `dpo_gradient_decomposition` measures the norms of POS, NEG and their sum (TOT),
overall and per weight tercile; `cdpo_weights` is the cDPO schedule that coordinates POS and NEG
over training (pass its output as pos_weight / neg_weight to `preference_loss`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

TERCILES = ("top", "mid", "bot")


def dpo_gradient_decomposition(
    params: Sequence[Tensor],
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    *,
    terciles: bool = True,
) -> dict[str, float]:
    """Norms of the POS / NEG / TOT components of the mean DPO loss's gradient w.r.t. `params`.

    chosen_logps, rejected_logps: [B] with graph to `params`; ref_*: [B]. Returns
    dyn/{pos,neg,total}_norm, dyn/weight_{mean,min,max} of sigma(-h), and with `terciles`
    dyn/{top,mid,bot}/{pos,neg,total}_norm over the examples ranked by weight (top = largest
    sigma(-h)), each scaled 1/B like the full loss so the terciles add up to the total.
    The graph is retained: the caller can still backward."""
    if chosen_logps.dim() != 1 or rejected_logps.shape != chosen_logps.shape:
        shapes = f"{tuple(chosen_logps.shape)}, {tuple(rejected_logps.shape)}"
        raise ValueError(f"chosen_logps / rejected_logps must both be [B], got {shapes}")
    params = list(params)
    with torch.no_grad():
        h = beta * ((chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps))
        weights = torch.sigmoid(-h)
    coef = beta * weights / chosen_logps.shape[0]
    metrics = {
        "dyn/weight_mean": float(weights.mean()),
        "dyn/weight_min": float(weights.min()),
        "dyn/weight_max": float(weights.max()),
    }
    groups = {"": torch.ones_like(coef)}
    if terciles:
        order = torch.argsort(weights, descending=True)
        for label, members in zip(TERCILES, torch.tensor_split(order, 3)):
            groups[f"{label}/"] = torch.zeros_like(coef).index_fill_(0, members, 1.0)
    for prefix, mask in groups.items():
        pos = _grads(-(coef * mask * chosen_logps).sum(), params)
        neg = _grads((coef * mask * rejected_logps).sum(), params)
        metrics[f"dyn/{prefix}pos_norm"] = _norm(pos)
        metrics[f"dyn/{prefix}neg_norm"] = _norm(neg)
        metrics[f"dyn/{prefix}total_norm"] = _norm([p + n for p, n in zip(pos, neg)])
    return metrics


def _grads(objective: Tensor, params: list[Tensor]) -> list[Tensor]:
    grads = torch.autograd.grad(objective, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _norm(tensors: list[Tensor]) -> float:
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in tensors)))


def cdpo_weights(step: int, t1: int, t2: int, *, floor: float = 0.0) -> tuple[float, float]:
    """(pos_weight, neg_weight) of cDPO at `step`: positive learning early, negative later.

    u = clamp((step - t1) / (t2 - t1), 0, 1); pos = 1 - (1 - floor) u; neg = floor + (1 - floor) u.
    So (1, floor) up to t1, (floor, 1) from t2, linear in between; floor = 0 makes the endpoints
    the paper's ablations "w/o NEG before t1" and "w/o POS after t2" (seed 003, Fig. 4 a, c)."""
    if not 0 <= t1 < t2:
        raise ValueError(f"cdpo_weights: need 0 <= t1 < t2, got t1={t1}, t2={t2}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"cdpo_weights: floor must be in [0, 1], got {floor}")
    u = min(max((step - t1) / (t2 - t1), 0.0), 1.0)
    return 1.0 - (1.0 - floor) * u, floor + (1.0 - floor) * u
