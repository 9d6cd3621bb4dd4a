"""Contrastive losses on the reward margin h = r(y_w) - r(y_l): dpo, ipo, exo, rpo, spo.

r(y) = beta * (log pi(y) - log pi_ref(y)). All are per pair; with M negatives the dispatcher
averages the M pair losses. Formulas and sources: docs/algorithms.md.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

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


@register("spo", options={"spo_lambda": 1.0})
def spo(batch: LossBatch) -> PairTerms:
    """DPO + spo_lambda * softplus(-r(y_w)) = DPO - spo_lambda * log sigma(r(y_w)).

    The regulariser rewards an absolute rise of log pi(y_w) over the reference (its value falls
    towards 0) and penalises a drop (it grows ~ -r(y_w)); its gradient is the SFT gradient on y_w
    weighted by sigma(-r(y_w)). Reading of seed 001: docs/algorithms.md.
    """
    lam = check_range(batch, "spo_lambda", 0.0, math.inf)
    regulariser = -F.logsigmoid(batch.chosen_reward)
    losses = sigmoid_pair_loss(_margin(batch)) + lam * regulariser
    return PairTerms(losses, batch.chosen_reward, batch.rejected_reward, {"spo/regulariser": regulariser})
