"""Contrastive losses on the reward margin h = r(y_w) - r(y_l): dpo, ipo, exo, rpo, spo.

r(y) = beta * (log pi(y) - log pi_ref(y)). All are per pair; with M negatives the dispatcher
averages the M pair losses. Formulas and sources: docs/algorithms.md.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

SPO_REGULARISERS = ("softplus", "hinge", "sft_step")

from apo_pipeline.losses.base import LossBatch, PairTerms, add_chosen_nll, check_range, register, sigmoid_pair_loss


def _margin(batch: LossBatch) -> Tensor:
    return batch.chosen_reward - batch.rejected_reward


@register("dpo", options={"label_smoothing": 0.0, "robust": False})
def dpo(batch: LossBatch) -> PairTerms:
    """-log sigma(h); label smoothing eps: conservative -(1-eps) log sigma(h) - eps log sigma(-h),
    or with robust=True the unbiased [-(1-eps) log sigma(h) + eps log sigma(-h)] / (1 - 2 eps)."""
    eps = check_range(batch, "label_smoothing", 0.0, 0.5)
    h = _margin(batch)
    if batch.options["robust"]:
        losses = ((1.0 - eps) * -F.logsigmoid(h) + eps * F.logsigmoid(-h)) / (1.0 - 2.0 * eps)
    else:
        losses = sigmoid_pair_loss(h, eps)
    return PairTerms(losses, batch.chosen_reward, batch.rejected_reward)


@register("ipo", options={"ipo_length_normalize": False})
def ipo(batch: LossBatch) -> PairTerms:
    """(Delta - 1/(2 tau))^2 with tau = beta and Delta the difference of the log-ratios, summed
    over tokens (default) or, with ipo_length_normalize=True, averaged over tokens (TRL)."""
    a, b = batch.chosen_logratio, batch.rejected_logratio
    if batch.options["ipo_length_normalize"]:
        why = "token counts, needed by ipo_length_normalize=True"
        batch.require("chosen_lengths", why)
        batch.require("rejected_lengths", why)
        a = a / batch.chosen_side("chosen_lengths")
        b = b / batch.rejected_side("rejected_lengths")
    losses = (a - b - 1.0 / (2.0 * batch.beta)) ** 2
    return PairTerms(losses, batch.chosen_reward, batch.rejected_reward)


@register("exo", options={"exo_eps": 1e-3})
def exo(batch: LossBatch) -> PairTerms:
    """Reverse KL between the model's sigma(h) and the smoothed label (1 - eps, eps):
    sigma(h) (log sigma(h) - log(1-eps)) + sigma(-h) (log sigma(-h) - log eps)."""
    eps = check_range(batch, "exo_eps", 0.0, 0.5)
    if eps == 0.0:
        raise ValueError(f"loss {batch.name!r}: option 'exo_eps' must be > 0")
    h = _margin(batch)
    log_p, log_q = F.logsigmoid(h), F.logsigmoid(-h)
    losses = log_p.exp() * (log_p - math.log1p(-eps)) + log_q.exp() * (log_q - math.log(eps))
    return PairTerms(losses, batch.chosen_reward, batch.rejected_reward)


@register("rpo", options={"sft_weight": 1.0})
def rpo(batch: LossBatch) -> PairTerms:
    """DPO + sft_weight * token-mean NLL of the chosen response (-log pi(y_w) / |y_w|)."""
    losses, metrics = add_chosen_nll(batch, sigmoid_pair_loss(_margin(batch)))
    return PairTerms(losses, batch.chosen_reward, batch.rejected_reward, metrics)


@register("spo", options={"spo_lambda": 1.0, "spo_regulariser": "softplus"})
def spo(batch: LossBatch) -> PairTerms:
    """DPO + spo_lambda * R(y_w), our reading of seed 001 (docs/algorithms.md), R by spo_regulariser:

    - softplus (default): softplus(-r(y_w)) = -log sigma(r(y_w)), smooth, against the reference;
      its gradient is the SFT gradient on y_w gated by sigma(-r(y_w));
    - hinge: max(0, -r(y_w)), a hinge on the chosen log-ratio against the reference (zero once
      log pi(y_w) >= log pi_ref(y_w), linear below);
    - sft_step: a hinge against a one-SFT-step target, which lies above log pi(y_w) so the hinge is
      always active: R = beta (sg(log pi(y_w)) - log pi(y_w)), value 0, gradient beta * grad NLL(y_w).
    spo_lambda = 0 is DPO exactly.
    """
    lam = check_range(batch, "spo_lambda", 0.0, math.inf)
    kind = batch.options["spo_regulariser"]
    if kind not in SPO_REGULARISERS:
        choices = ", ".join(SPO_REGULARISERS)
        raise ValueError(f"loss {batch.name!r}: option 'spo_regulariser' must be one of {choices}, got {kind!r}")
    if kind == "softplus":
        regulariser = -F.logsigmoid(batch.chosen_reward)
    elif kind == "hinge":
        regulariser = F.relu(-batch.chosen_reward)
    else:
        regulariser = batch.beta * (batch.chosen.detach() - batch.chosen)
    losses = sigmoid_pair_loss(_margin(batch))
    if lam:
        losses = losses + lam * regulariser
    return PairTerms(losses, batch.chosen_reward, batch.rejected_reward, {"spo/regulariser": regulariser})
