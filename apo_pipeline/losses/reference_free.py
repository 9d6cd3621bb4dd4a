"""Reference-free losses (no pi_ref; ref_* may be None and are ignored): simpo, cpo."""

from __future__ import annotations

from apo_pipeline.losses.base import LossBatch, PairTerms, add_chosen_nll, register, sigmoid_pair_loss

_LENGTHS = "token counts, SimPO averages log-probs over tokens"


@register("simpo", options={"gamma": 0.5}, reference_free=True)
def simpo(batch: LossBatch) -> PairTerms:
    """-log sigma(beta log pi(y_w)/|y_w| - beta log pi(y_l)/|y_l| - gamma); the rewards are
    r(y) = beta * log pi(y) / |y| and gamma is a margin in reward units (TRL's simpo_gamma)."""
    batch.require("chosen_lengths", _LENGTHS)
    batch.require("rejected_lengths", _LENGTHS)
    r_w = batch.beta * batch.chosen / batch.chosen_side("chosen_lengths")
    r_l = batch.beta * batch.rejected / batch.rejected_side("rejected_lengths")
    losses = sigmoid_pair_loss(r_w - r_l - float(batch.options["gamma"]))
    return PairTerms(losses, r_w, r_l)


@register("cpo", options={"sft_weight": 1.0}, reference_free=True)
def cpo(batch: LossBatch) -> PairTerms:
    """-log sigma(beta (log pi(y_w) - log pi(y_l))) + sft_weight * (-log pi(y_w) / |y_w|);
    rewards r(y) = beta * log pi(y). sft_weight is TRL's cpo_alpha (default 1.0)."""
    r_w, r_l = batch.beta * batch.chosen, batch.beta * batch.rejected
    losses, metrics = add_chosen_nll(batch, sigmoid_pair_loss(r_w - r_l))
    return PairTerms(losses, r_w, r_l, metrics)
