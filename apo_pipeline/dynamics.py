"""Gradient dynamics of DPO (seed 003, "What is preference optimization doing, how and why?").

grad L_dpo = -(beta / B) sum_i sigma(-h_i) [grad log pi(y_w,i) - grad log pi(y_l,i)], with
h_i = beta (log-ratio(y_w,i) - log-ratio(y_l,i)). Positive learning (POS) is the
grad log pi(y_w) part, negative learning (NEG) the -grad log pi(y_l) part, and sigma(-h) the loss
reweighting. `dpo_gradient_decomposition` measures, for POS, NEG and their sum (TOT), overall and
per weight tercile (TOP / MID / BOT): the gradient norms and, given the gradient of the NLL of a
set of target responses D' (`target_nll_gradient`), the seed's Fig. 1 quantity
G = <grad L_component, grad NLL(D')>. It also splits the DPO loss by tercile (the reweighting
analysis). `cdpo_weights` is the cDPO schedule that coordinates POS and NEG over training (pass
its output as pos_weight / neg_weight to `preference_loss`).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

TERCILES = ("top", "mid", "bot")
CDPO_SHAPES = ("linear", "phases")
CdpoShape = Literal["linear", "phases"]


def dpo_gradient_decomposition(
    params: Sequence[Tensor],
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    *,
    terciles: bool = True,
    target_grad: Sequence[Tensor] | None = None,
) -> dict[str, float]:
    """POS / NEG / TOT components of the mean DPO loss's gradient w.r.t. `params`.

    chosen_logps, rejected_logps: [B] with graph to `params`; ref_*: [B]. `target_grad`: the
    gradient of NLL(D') w.r.t. `params` (same order and shapes; `target_nll_gradient`), or None.
    Returns
    - dyn/{pos,neg,total}_norm: L2 norms of the components;
    - dyn/G_{pos,neg,total} (with `target_grad`): <component, grad NLL(D')>; positive = the
      step -lr * component lowers the NLL of D' to first order; G_total = G_pos + G_neg;
    - dyn/weight_{mean,min,max}: of the reweighting sigma(-h);
    - with `terciles`, over the examples ranked by sigma(-h) (top = largest, `torch.tensor_split`
      sizes): dyn/{top,mid,bot}/{pos,neg,total}_norm (each scaled 1/B like the full loss, so the
      terciles add up to the total), dyn/{top,mid,bot}/G_{pos,neg,total}, the tercile's mean
      weight dyn/{t}/weight_mean and its share of the batch's DPO loss dyn/{t}/loss_share
      (sum of -log sigma(h_i) over the tercile / over the batch; the shares add up to 1).
    The graph is retained: the caller can still backward."""
    if chosen_logps.dim() != 1 or rejected_logps.shape != chosen_logps.shape:
        shapes = f"{tuple(chosen_logps.shape)}, {tuple(rejected_logps.shape)}"
        raise ValueError(f"chosen_logps / rejected_logps must both be [B], got {shapes}")
    params = list(params)
    if target_grad is not None:
        target_grad = list(target_grad)
        if len(target_grad) != len(params):
            raise ValueError(f"target_grad must hold one tensor per parameter ({len(params)}), got {len(target_grad)}")
    with torch.no_grad():
        h = beta * ((chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps))
        weights = torch.sigmoid(-h)
        losses = F.softplus(-h)
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
            metrics[f"dyn/{label}/weight_mean"] = float(weights[members].mean()) if len(members) else 0.0
            metrics[f"dyn/{label}/loss_share"] = float(losses[members].sum() / losses.sum())
    for prefix, mask in groups.items():
        pos = _grads(-(coef * mask * chosen_logps).sum(), params)
        neg = _grads((coef * mask * rejected_logps).sum(), params)
        metrics[f"dyn/{prefix}pos_norm"] = _norm(pos)
        metrics[f"dyn/{prefix}neg_norm"] = _norm(neg)
        metrics[f"dyn/{prefix}total_norm"] = _norm([p + n for p, n in zip(pos, neg)])
        if target_grad is not None:
            g_pos, g_neg = _dot(pos, target_grad), _dot(neg, target_grad)
            metrics[f"dyn/{prefix}G_pos"] = g_pos
            metrics[f"dyn/{prefix}G_neg"] = g_neg
            metrics[f"dyn/{prefix}G_total"] = g_pos + g_neg
    return metrics


def target_nll_gradient(params: Sequence[Tensor], target_logps: Sequence[Tensor], num_tokens: int) -> list[Tensor]:
    """grad w.r.t. `params` of NLL(D') = -(sum of the targets' summed log-probs) / num_tokens, the
    token-mean negative log-likelihood of the target responses D'.

    `target_logps`: chunks of per-sequence summed log-probs ([n_c] each, with graph to `params`),
    so the caller can run D' in micro-batches; each chunk's graph is freed after its backward.
    Parameters outside the graph get zeros."""
    if num_tokens < 1:
        raise ValueError(f"target_nll_gradient: num_tokens must be >= 1, got {num_tokens}")
    params = list(params)
    total: list[Tensor | None] = [None] * len(params)
    for chunk in target_logps:
        grads = torch.autograd.grad(-chunk.sum() / num_tokens, params, allow_unused=True)
        total = [g if t is None else t if g is None else t + g for t, g in zip(total, grads)]
    return [torch.zeros_like(p) if t is None else t for p, t in zip(params, total)]


def _grads(objective: Tensor, params: list[Tensor]) -> list[Tensor]:
    grads = torch.autograd.grad(objective, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _norm(tensors: list[Tensor]) -> float:
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in tensors)))


def _dot(a: list[Tensor], b: list[Tensor]) -> float:
    """Sum of the elementwise products; a parameter outside one of the graphs is a zero placeholder
    of the parameter's own shape (empty for a ZeRO-3 partition), which contributes nothing."""
    total = 0.0
    for x, y in zip(a, b):
        if x.shape == y.shape:
            total += float((x.double() * y.double()).sum())
        elif x.count_nonzero() and y.count_nonzero():
            raise ValueError(f"gradient shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    return total


def cdpo_weights(
    step: int, t1: int, t2: int, *, floor: float = 0.0, shape: CdpoShape = "linear"
) -> tuple[float, float]:
    """(pos_weight, neg_weight) of cDPO at `step`: positive learning early, negative later.

    shape "linear" (a cross-fade): u = clamp((step - t1) / (t2 - t1), 0, 1); pos = 1 - (1 - floor) u,
    neg = floor + (1 - floor) u. So (1, floor) up to t1, (floor, 1) from t2, linear in between.
    shape "phases": (1, floor) before t1, (1, 1) (plain DPO) for t1 <= step < t2, (floor, 1) from t2.
    With floor = 0 the early and late phases of both are the paper's ablations "w/o NEG before t1"
    and "w/o POS after t2" (seed 003, Fig. 4 a, c)."""
    if not 0 <= t1 < t2:
        raise ValueError(f"cdpo_weights: need 0 <= t1 < t2, got t1={t1}, t2={t2}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"cdpo_weights: floor must be in [0, 1], got {floor}")
    if shape == "phases":
        return (1.0, floor) if step < t1 else (1.0, 1.0) if step < t2 else (floor, 1.0)
    if shape != "linear":
        raise ValueError(f"cdpo_weights: shape must be one of {', '.join(CDPO_SHAPES)}, got {shape!r}")
    u = min(max((step - t1) / (t2 - t1), 0.0), 1.0)
    return 1.0 - (1.0 - floor) * u, floor + (1.0 - floor) * u
