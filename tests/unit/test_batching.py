"""Micro-batching of token-id sequences (length buckets, padding, prompt masking, summed log-probs)
and of preference groups (negatives, reference log-probs at the picks, the loss call)."""

from __future__ import annotations

import math

import pytest
import torch

from apo_pipeline.config.sections import AlgorithmConfig
from apo_pipeline.engine.batching import (
    collate,
    length_buckets,
    make_micro_batches,
    sequence_logps,
    shard_indices,
)
from apo_pipeline.engine.preference_batch import (
    batch_loss,
    batch_reward_sum,
    choose_negatives,
    needs_policy_logps,
    preference_batches,
    validate_groups,
)
from apo_pipeline.losses import preference_loss
from apo_pipeline.rollout import TrainGroup

PAD = 0
DPO = AlgorithmConfig(loss="dpo", beta=0.1)


def test_length_buckets_sort_longest_first_and_cover_every_index_once():
    lengths = [3, 9, 1, 7, 7, 2, 5]
    buckets = length_buckets(lengths, 3)
    assert buckets == [[1, 3, 4], [6, 0, 5], [2]]
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    for earlier, later in zip(buckets, buckets[1:]):
        assert min(lengths[i] for i in earlier) >= max(lengths[i] for i in later)


def test_length_buckets_without_sort_keep_input_order():
    assert length_buckets([5, 1, 4, 2, 3], 2, sort=False) == [[0, 1], [2, 3], [4]]
    assert length_buckets([], 4) == []
    with pytest.raises(ValueError, match="batch_size"):
        length_buckets([1], 0)


def test_shard_indices_balance_count_and_load():
    lengths = [10, 9, 8, 7, 6, 5, 4]
    shards = shard_indices(lengths, 2)
    assert shards == [[0, 3, 4], [1, 2, 5, 6]]
    assert sorted(i for s in shards for i in s) == list(range(len(lengths)))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shard_indices([3, 1], 4) == [[0], [1], [], []]


def test_collate_right_pads_and_masks_the_prompt():
    prompts = [[5, 6, 7], [5], [8, 9]]
    responses = [[1, 2], [3, 4, 4, 4], [2]]
    batch = collate(prompts, responses, [2, 0, 1], PAD)
    assert batch.input_ids.tolist() == [[8, 9, 2, PAD, PAD], [5, 6, 7, 1, 2], [5, 3, 4, 4, 4]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert batch.response_mask.int().tolist() == [[0, 0, 1, 0, 0], [0, 0, 0, 1, 1], [0, 1, 1, 1, 1]]
    assert batch.index.tolist() == [2, 0, 1]
    assert batch.token_counts.tolist() == [1, 2, 4]
    assert batch.num_tokens == 13
    assert batch.logits_start == 0 and batch.logits_to_keep == 5


@pytest.mark.parametrize("prompt, response, part", [([], [1], "prompt"), ([1], [], "response")])
def test_collate_rejects_empty_parts_naming_the_row(prompt, response, part):
    with pytest.raises(ValueError, match=f"sequence 1: empty {part}"):
        collate([[1], prompt], [[2], response], [0, 1], PAD)


def test_make_micro_batches_pad_each_batch_to_its_own_longest():
    prompts = [[1] * n for n in (2, 6, 3, 5)]
    responses = [[2]] * 4
    batches = make_micro_batches(prompts, responses, 2, PAD)
    assert [b.index.tolist() for b in batches] == [[1, 3], [2, 0]]
    assert [b.input_ids.shape[1] for b in batches] == [7, 4]
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        make_micro_batches([[1], [1]], [[2]], 2, PAD)


def _direct_logps(logits: torch.Tensor, prompt: list[int], response: list[int]) -> float:
    """log p(response | prompt) from full-sequence logits [T, V], token by token."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    p = len(prompt)
    return sum(float(logp[p + j - 1, tok]) for j, tok in enumerate(response))


def test_sequence_logps_match_a_direct_token_by_token_sum():
    torch.manual_seed(0)
    prompts = [[3, 4, 5], [6], [7, 8]]
    responses = [[9, 1], [2, 3, 4], [5]]
    batch = collate(prompts, responses, [0, 1, 2], PAD)
    logits = torch.randn(3, batch.input_ids.shape[1], 11)
    got = sequence_logps(logits, batch)
    want = [_direct_logps(logits[row], prompts[row], responses[row]) for row in range(3)]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32), rtol=1e-6, atol=1e-6)


def test_sequence_logps_accept_trailing_logits_only_and_ignore_padding_logits():
    torch.manual_seed(1)
    prompts, responses = [[3, 4, 5], [6, 7]], [[1], [2, 2, 2]]
    batch = collate(prompts, responses, [0, 1], PAD)
    logits = torch.randn(2, batch.input_ids.shape[1], 9)
    full = sequence_logps(logits, batch)
    assert batch.logits_start == 1
    torch.testing.assert_close(sequence_logps(logits[:, batch.logits_start :], batch), full)
    poisoned = logits.clone()
    poisoned[0, 3:] = float("nan")  # positions after row 0's last token
    poisoned[:, 0] = float("nan")  # position 0 scores no response token
    torch.testing.assert_close(sequence_logps(poisoned, batch), full)
    with pytest.raises(ValueError, match="do not cover"):
        sequence_logps(logits[:, 2:], batch)


def test_sequence_logps_gradient_flows_to_response_positions_only():
    batch = collate([[3, 4]], [[1, 2]], [0], PAD)
    logits = torch.zeros(1, 4, 5, requires_grad=True)
    sequence_logps(logits, batch).sum().backward()
    touched = logits.grad.abs().sum(dim=-1)[0]
    assert touched.tolist()[:1] == [0.0] and touched[1] > 0 and touched[2] > 0 and touched[3] == 0


# ---- preference groups -> loss inputs (apo_pipeline.engine.preference_batch) -------------------


def _groups() -> list[TrainGroup]:
    return [
        TrainGroup([1, 2], [[3], [4, 5], [6, 7, 8]], preferred=1, ref_logps=[-1.0, -2.0, -3.0]),
        TrainGroup([9], [[3, 3], [4]], preferred=0, ref_logps=[-4.0, -5.0], win_probs=[0.7, 0.3]),
        TrainGroup([2, 2, 2], [[5], [6]], preferred=1, ref_logps=[-6.0, -7.0]),
    ]


def test_negatives_for_pairs_are_the_other_candidate_and_need_no_policy_logps():
    groups = _groups()[1:]
    assert not needs_policy_logps(groups, DPO)
    negatives = choose_negatives(groups, None, DPO, torch.Generator().manual_seed(0))
    assert negatives.indices == [[1], [0]]
    assert negatives.entropy.tolist() == [0.0, 0.0]


def test_mc_negatives_follow_the_kernel_per_k_and_never_pick_the_preferred():
    groups = _groups()
    assert needs_policy_logps(groups, DPO)
    assert not needs_policy_logps(groups, DPO.model_copy(update={"negatives": "random"}))
    policy = [[-1.0, -2.0, 0.0], [-4.0, -5.0], [-6.0, -7.0]]  # group 0: candidate 2 gains 3 nats
    pick_max = choose_negatives(groups, policy, DPO.model_copy(update={"negatives": "max"}), torch.Generator())
    pick_min = choose_negatives(groups, policy, DPO.model_copy(update={"negatives": "min"}), torch.Generator())
    assert pick_max.indices == [[2], [1], [0]] and pick_min.indices == [[0], [1], [0]]
    assert 0.0 < float(pick_max.entropy[0]) < math.log(2)


def test_preference_batches_are_group_major_with_refs_and_lengths_at_the_picks():
    groups = _groups()
    negatives = choose_negatives(groups, None, DPO, torch.Generator().manual_seed(0))  # group 0: random of {0, 2}
    batches = preference_batches(groups, negatives, 2, PAD)
    assert [b.num_groups for b in batches] == [2, 1]
    first = batches[0]  # groups 0 and 2 (longest first), then group 1
    neg0 = negatives.indices[0][0]
    assert first.ref_chosen.tolist() == [-2.0, -7.0]
    assert first.ref_rejected.tolist() == [[[-1.0, -2.0, -3.0][neg0]], [-6.0]]
    assert first.micro.token_counts.tolist() == [2, len(groups[0].candidate_ids[neg0]), 1, 1]
    assert first.win_chosen is None and batches[1].win_chosen.tolist() == pytest.approx([0.7])


def test_batch_loss_equals_preference_loss_on_the_split_log_probs():
    groups = _groups()[1:]
    batch = preference_batches(groups, choose_negatives(groups, None, DPO, torch.Generator()), 4, PAD)[0]
    logps = torch.tensor([-3.0, -5.5, -6.5, -6.0], requires_grad=True)  # rows: chosen, negative per group
    got = batch_loss(batch, logps, DPO, step=0)
    chosen, rejected = logps.view(2, 2)[:, 0], logps.view(2, 2)[:, 1]
    want = preference_loss("dpo", chosen, rejected, batch.ref_chosen, batch.ref_rejected.squeeze(1), beta=DPO.beta)
    assert got.loss.item() == pytest.approx(want.loss.item()) and got.metrics == pytest.approx(want.metrics)
    sppo = batch_loss(batch, logps, AlgorithmConfig(loss="sppo", beta=0.5), step=0)
    assert math.isfinite(sppo.loss.item())


def test_batch_loss_takes_the_cdpo_shape_and_the_learner_options():
    groups = _groups()[1:]
    batch = preference_batches(groups, choose_negatives(groups, None, DPO, torch.Generator()), 4, PAD)[0]

    def chosen_grad(algorithm, step, extra=None):
        logps = torch.tensor([-3.0, -5.5, -6.5, -6.0], requires_grad=True)
        batch_loss(batch, logps, algorithm, step, extra).loss.backward()
        return logps.grad.view(2, 2)

    plain = chosen_grad(DPO, 0)
    for shape, step, (pos, neg) in (("linear", 15, (0.5, 0.5)), ("phases", 15, (1.0, 1.0)), ("phases", 5, (1.0, 0.0))):
        algorithm = DPO.model_copy(update={"cdpo": (10, 20), "cdpo_shape": shape})
        got = chosen_grad(algorithm, step)
        torch.testing.assert_close(got[:, 0], pos * plain[:, 0])
        torch.testing.assert_close(got[:, 1], neg * plain[:, 1])
    bco = AlgorithmConfig(loss="bco", beta=0.1)
    assert not torch.equal(chosen_grad(bco, 0, {"bco_delta": 0.0}), chosen_grad(bco, 0, {"bco_delta": 1.0}))


def test_batch_reward_sum_covers_chosen_and_every_negative():
    groups = _groups()[1:]
    batch = preference_batches(groups, choose_negatives(groups, None, DPO, torch.Generator()), 4, PAD)[0]
    logps = torch.tensor([-3.0, -5.5, -6.5, -6.0])
    total, count = batch_reward_sum(batch, logps, beta=0.5)
    refs = torch.cat([batch.ref_chosen, batch.ref_rejected.squeeze(1)])
    assert count == 4 and total == pytest.approx(0.5 * float(logps.view(2, 2).T.flatten().sum() - refs.sum()))


@pytest.mark.parametrize(
    "group, algorithm, message",
    [
        (TrainGroup([1], [[2], [3]], 0), DPO, "train group 0: ref_logps missing"),
        (TrainGroup([], [[2], [3]], 0, [0.0, 0.0]), DPO, "empty prompt"),
        (TrainGroup([1], [[2], [3]], 0, [0.0, 0.0]), AlgorithmConfig(loss="rnce", num_negatives=2), "too few"),
        (TrainGroup([1], [[2], [3], [4]], 0, [0.0] * 3), AlgorithmConfig(mc_steps=3), "mc chain"),
    ],
)
def test_validate_groups_names_the_bad_group(group, algorithm, message):
    with pytest.raises(ValueError, match=message):
        validate_groups([group], algorithm)
    validate_groups([TrainGroup([1], [[2], [3]], 0)], AlgorithmConfig(loss="simpo"))  # reference-free
