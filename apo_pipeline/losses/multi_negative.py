"""Losses defined natively over one chosen and M negatives: rnce (InfoNCE, MC-PO Prop. 2.1)."""

from __future__ import annotations

import torch

from apo_pipeline.losses.base import LossBatch, PairTerms, register


@register("rnce", native_multi_negative=True)
def rnce(batch: LossBatch) -> PairTerms:
    """-log [exp r(y_w) / (exp r(y_w) + sum_j exp r(y_j))] over the chosen and its M negatives,
    i.e. cross-entropy of picking y_w among 1 + M candidates; M = 1 is exactly dpo.
    Metric rnce/p_chosen: the softmax probability of y_w among the 1 + M candidates."""
    logits = torch.cat([batch.chosen_reward, batch.rejected_reward], dim=-1)  # [B, 1 + M]
    log_p_chosen = logits[:, :1] - torch.logsumexp(logits, dim=-1, keepdim=True)
    return PairTerms(-log_p_chosen, batch.chosen_reward, batch.rejected_reward, {"rnce/p_chosen": log_p_chosen.exp()})
