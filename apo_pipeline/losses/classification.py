"""Losses with separate terms for the chosen and the rejected response ("classification-based"
in MC-PO, seed 002 Sec. 4): sppo, nca, bco, kto, apo_zero.

r(y) = beta * (log pi(y) - log pi_ref(y)); a, b the chosen / rejected log-ratios (no beta).
Per pair; with M negatives the dispatcher averages the M pair losses. Sources: docs/algorithms.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from apo_pipeline.losses.base import REQUIRED, LossBatch, PairTerms, register


@register("sppo", options={"win_prob_chosen": 1.0, "win_prob_rejected": 0.0})
def sppo(batch: LossBatch) -> PairTerms:
    """1/2 [(a - eta (P_w - 1/2))^2 + (b - eta (P_l - 1/2))^2], eta = 1/beta (uclaml/SPPO).

    P_w, P_l: estimated probabilities that y_w / y_l beat the current policy (float, [B] or
    [B, M]); the defaults 1 / 0 are hard labels (half of TRL's sppo_hard)."""
    p_w = _probabilities(batch, "win_prob_chosen", batch.chosen_side("win_prob_chosen"))
    p_l = _probabilities(batch, "win_prob_rejected", batch.rejected_side("win_prob_rejected"))
    eta = 1.0 / batch.beta
    chosen_term = (batch.chosen_logratio - eta * (p_w - 0.5)) ** 2
    rejected_term = (batch.rejected_logratio - eta * (p_l - 0.5)) ** 2
    losses = 0.5 * (chosen_term + rejected_term)
    return PairTerms(losses, batch.chosen_reward, batch.rejected_reward)


def _probabilities(batch: LossBatch, option: str, value: Tensor) -> Tensor:
    if bool(((value < 0) | (value > 1)).any()):
        raise ValueError(f"loss {batch.name!r}: option {option!r} must be probabilities in [0, 1]")
    return value


@register("nca")
def nca(batch: LossBatch) -> PairTerms:
    """-log sigma(r_w) - 1/2 log sigma(-r_w) - 1/2 log sigma(-r_l) (TRL nca_pair)."""
    r_w, r_l = batch.chosen_reward, batch.rejected_reward
    losses = -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)
    return PairTerms(losses, r_w, r_l)


@register("bco", options={"bco_delta": REQUIRED})
def bco(batch: LossBatch) -> PairTerms:
    """-log sigma(r_w - delta) - log sigma(-(r_l - delta)), delta the caller's running mean of every
    implicit reward seen (reward units; the learner keeps it: `losses.running_mean`). Metric
    bco/reward_mean: this batch's mean of all chosen and rejected rewards."""
    delta = float(batch.options["bco_delta"])
    r_w, r_l = batch.chosen_reward, batch.rejected_reward
    losses = -F.logsigmoid(r_w - delta) - F.logsigmoid(-(r_l - delta))
    reward_mean = torch.cat([r_w.detach().flatten(), r_l.detach().flatten()]).mean()
    return PairTerms(losses, r_w, r_l, {"bco/reward_mean": reward_mean})


@register("kto", options={"kto_kl": None})
def kto(batch: LossBatch) -> PairTerms:
    """Pair form of KTO: (1 - sigma(beta (a - z0))) + (1 - sigma(beta (z0 - b))).

    z0 = kto_kl (a KL estimate in nats, clamped at >= 0, never differentiated). Without it, z0 is
    estimated from the batch as in TRL's kto_pair: the chosen term uses mean(b) and the rejected
    term mean(a), each detached and clamped at 0."""
    a, b = batch.chosen_logratio, batch.rejected_logratio
    if batch.options["kto_kl"] is None:
        z_chosen = b.detach().mean().clamp(min=0.0)
        z_rejected = a.detach().mean().clamp(min=0.0)
    else:
        z_chosen = z_rejected = torch.tensor(max(float(batch.options["kto_kl"]), 0.0), dtype=a.dtype, device=a.device)
    losses = (1.0 - torch.sigmoid(batch.beta * (a - z_chosen))) + (1.0 - torch.sigmoid(batch.beta * (z_rejected - b)))
    metrics = {"kto/z0_chosen_term": z_chosen, "kto/z0_rejected_term": z_rejected}
    return PairTerms(losses, batch.chosen_reward, batch.rejected_reward, metrics)


@register("apo_zero")
def apo_zero(batch: LossBatch) -> PairTerms:
    """Anchored PO (zero variant): (1 - sigma(r_w)) + sigma(r_l)."""
    r_w, r_l = batch.chosen_reward, batch.rejected_reward
    return PairTerms((1.0 - torch.sigmoid(r_w)) + torch.sigmoid(r_l), r_w, r_l)
