"""From `TrainGroup`s to loss inputs: MC-kernel negatives, micro-batches of chosen + negatives,
reference log-probs gathered at the chosen indices, and the loss call (pure torch, no Ray).

A training example is one group: its preferred candidate and M negatives drawn among the other
K - 1 by `apo_pipeline.mc_kernel` from the current policy's log-probs of all K candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from apo_pipeline.config.sections import AlgorithmConfig
from apo_pipeline.dynamics import cdpo_weights
from apo_pipeline.engine.batching import MicroBatch, collate, length_buckets
from apo_pipeline.losses import LossOutput, loss_spec, preference_loss
from apo_pipeline.mc_kernel import sample_negatives
from apo_pipeline.rollout import TrainGroup

POLICY_WEIGHTED = ("mc", "max", "min")
CHAIN_PROPOSALS = 1  # fresh uniform proposals per step of a multi-step mc chain (mc_kernel proposal_size)


def has_refs(groups: Sequence[TrainGroup], loss: str) -> bool:
    """Whether the groups carry reference log-probs; a ValueError naming the group if `loss` needs
    them and one lacks them (reference-free losses may go without, the kernel then uses 0)."""
    missing = [i for i, g in enumerate(groups) if not g.ref_logps]
    if missing and not loss_spec(loss).reference_free:
        raise ValueError(
            f"train group {missing[0]}: ref_logps missing; loss {loss!r} needs reference log-probs "
            "(compute them with LearnerGroup.compute_logps at the start of the segment)"
        )
    return not missing


def validate_groups(groups: Sequence[TrainGroup], algorithm: AlgorithmConfig) -> None:
    """Raise a ValueError naming the first bad group (checked before any rank starts a collective)."""
    if not groups:
        raise ValueError("train_step needs at least one train group")
    has_refs(groups, algorithm.loss)
    for i, group in enumerate(groups):
        k = len(group.candidate_ids)
        if not group.prompt_ids or not all(group.candidate_ids):
            raise ValueError(f"train group {i}: empty prompt or candidate token ids")
        if k - 1 < algorithm.num_negatives:
            raise ValueError(f"train group {i}: {k} candidates, too few for {algorithm.num_negatives} negatives")
        if uses_chain(algorithm) and k - 1 - algorithm.num_negatives <= CHAIN_PROPOSALS:
            raise ValueError(
                f"train group {i}: {k} candidates leave no room for the mc chain's proposals "
                f"(algorithm.mc_steps = {algorithm.mc_steps} needs K - 1 - M > {CHAIN_PROPOSALS})"
            )
        if group.win_probs is not None and len(group.win_probs) != k:
            raise ValueError(f"train group {i}: {len(group.win_probs)} win_probs for {k} candidates")


def uses_chain(algorithm: AlgorithmConfig) -> bool:
    """Whether the kernel runs a multi-step i-SIR chain (variant mc with mc_steps > 1)."""
    return algorithm.negatives == "mc" and algorithm.mc_steps > 1


def needs_policy_logps(groups: Sequence[TrainGroup], algorithm: AlgorithmConfig) -> bool:
    """Whether the negatives depend on the current policy: a weighted kernel with a real choice (K - 1 > M)."""
    return algorithm.negatives in POLICY_WEIGHTED and any(
        len(g.candidate_ids) - 1 > algorithm.num_negatives for g in groups
    )


@dataclass
class Negatives:
    """indices[b]: the M negative candidate indices of group b; entropy [B]: of the kernel weights (nats)."""

    indices: list[list[int]]
    entropy: Tensor


def choose_negatives(
    groups: Sequence[TrainGroup],
    policy_logps: Sequence[Sequence[float]] | None,
    algorithm: AlgorithmConfig,
    generator: torch.Generator,
) -> Negatives:
    """M negatives per group from the MC kernel (variant `algorithm.negatives`, beta `algorithm.beta`).

    policy_logps[b][k]: log pi(candidate k) of group b, or None where the choice does not depend on
    it (then the kernel weights are uniform). Groups are batched by their K. `mc_steps` > 1 runs the
    i-SIR chain with one fresh proposal per step.
    """
    refs = has_refs(groups, algorithm.loss)
    by_k: dict[int, list[int]] = {}
    for i, group in enumerate(groups):
        by_k.setdefault(len(group.candidate_ids), []).append(i)
    indices: list[list[int]] = [[] for _ in groups]
    entropy = torch.zeros(len(groups))
    chain = uses_chain(algorithm)
    for k, members in sorted(by_k.items()):
        ref = torch.tensor([groups[i].ref_logps if refs else [0.0] * k for i in members], dtype=torch.float64)
        policy = ref if policy_logps is None else torch.tensor([policy_logps[i] for i in members], dtype=torch.float64)
        sample = sample_negatives(
            policy,
            ref,
            torch.tensor([groups[i].preferred for i in members]),
            algorithm.num_negatives,
            beta=algorithm.beta,
            variant=algorithm.negatives,
            steps=algorithm.mc_steps if chain else 1,
            proposal_size=CHAIN_PROPOSALS if chain else None,
            generator=generator,
        )
        for row, i in enumerate(members):
            indices[i] = sample.indices[row].tolist()
        entropy[members] = sample.entropy.float()
    return Negatives(indices, entropy)


@dataclass
class PreferenceBatch:
    """One micro-batch of B groups with M negatives each.

    `micro` holds B * (1 + M) rows, group-major: row b * (1 + M) is group b's chosen response, the
    next M rows its negatives. ref_* / win_* are None when the groups carry none:
    ref_chosen [B], ref_rejected [B, M], win_chosen [B], win_rejected [B, M] (float32).
    """

    micro: MicroBatch
    num_negatives: int
    ref_chosen: Tensor | None
    ref_rejected: Tensor | None
    win_chosen: Tensor | None
    win_rejected: Tensor | None

    @property
    def num_groups(self) -> int:
        return self.micro.input_ids.shape[0] // (1 + self.num_negatives)

    def split(self, values: Tensor) -> tuple[Tensor, Tensor]:
        """Per-row values [B * (1 + M)] as chosen [B] and rejected [B] (M = 1) or [B, M]."""
        table = values.view(self.num_groups, 1 + self.num_negatives)
        return table[:, 0], self.rejected_side(table[:, 1:])

    def rejected_side(self, table: Tensor) -> Tensor:
        """A [B, M] table as the losses take it: [B] for M = 1, else [B, M]."""
        return table.squeeze(1) if self.num_negatives == 1 else table


def preference_batches(
    groups: Sequence[TrainGroup],
    negatives: Negatives,
    batch_size: int,
    pad_id: int,
    *,
    sort: bool = True,
) -> list[PreferenceBatch]:
    """Micro-batches of at most `batch_size` groups; with `sort`, bucketed by each group's longest sequence."""
    picks = [[g.preferred, *negatives.indices[i]] for i, g in enumerate(groups)]
    lengths = [len(g.prompt_ids) + max(len(g.candidate_ids[c]) for c in p) for g, p in zip(groups, picks)]
    return [_batch(groups, picks, chunk, pad_id) for chunk in length_buckets(lengths, batch_size, sort=sort)]


def _batch(groups: Sequence[TrainGroup], picks: list[list[int]], chunk: list[int], pad_id: int) -> PreferenceBatch:
    prompts = [groups[i].prompt_ids for i in chunk for _ in picks[i]]
    responses = [groups[i].candidate_ids[c] for i in chunk for c in picks[i]]
    micro = collate(prompts, responses, range(len(prompts)), pad_id)

    def at_picks(field: str) -> tuple[Tensor | None, Tensor | None]:
        rows = [getattr(groups[i], field) for i in chunk]
        if not all(rows):
            return None, None
        table = torch.tensor([[row[c] for c in picks[i]] for row, i in zip(rows, chunk)], dtype=torch.float32)
        return table[:, 0], table[:, 1:]

    return PreferenceBatch(micro, len(picks[chunk[0]]) - 1, *at_picks("ref_logps"), *at_picks("win_probs"))


def batch_reward_sum(batch: PreferenceBatch, logps: Tensor, beta: float) -> tuple[float, int]:
    """Sum and count of the implicit rewards beta (log pi - log pi_ref) of every chosen and rejected
    row of `batch` (policy log-probs `logps` [B * (1 + M)]); BCO's running delta is their mean."""
    chosen, rejected = batch.split(logps.detach().float().cpu())
    ref_rejected = batch.rejected_side(batch.ref_rejected)
    rewards = torch.cat([(chosen - batch.ref_chosen).flatten(), (rejected - ref_rejected).flatten()])
    return float(beta * rewards.sum()), rewards.numel()


def batch_loss(
    batch: PreferenceBatch, logps: Tensor, algorithm: AlgorithmConfig, step: int, extra: dict | None = None
) -> LossOutput:
    """`preference_loss` of `algorithm.loss` on policy log-probs `logps` [B * (1 + M)] of `batch`.

    Passes the token counts, the SPPO win probabilities (when the loss takes them and the groups
    carry them), the cDPO weights of `step` (when `algorithm.cdpo` is set), `algorithm.loss_options`
    and the learner's `extra` options (BCO's running `bco_delta`).
    """
    device = logps.device

    def chosen_side(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(device)

    def rejected_side(t: Tensor | None) -> Tensor | None:
        return None if t is None else batch.rejected_side(t.to(device))

    chosen, rejected = batch.split(logps)
    lengths_chosen, lengths_rejected = batch.split(batch.micro.token_counts.to(device, torch.float32))
    options: dict = {"chosen_lengths": lengths_chosen, "rejected_lengths": lengths_rejected}
    if batch.win_chosen is not None and "win_prob_chosen" in loss_spec(algorithm.loss).options:
        options["win_prob_chosen"] = chosen_side(batch.win_chosen)
        options["win_prob_rejected"] = rejected_side(batch.win_rejected)
    if algorithm.cdpo is not None:
        options["pos_weight"], options["neg_weight"] = cdpo_weights(step, *algorithm.cdpo, shape=algorithm.cdpo_shape)
    options.update(algorithm.loss_options)
    options.update(extra or {})
    return preference_loss(
        algorithm.loss,
        chosen,
        rejected,
        chosen_side(batch.ref_chosen),
        rejected_side(batch.ref_rejected),
        beta=algorithm.beta,
        **options,
    )
