"""The loops' pure helpers: segment split, batch schedule, groups built from judge verdicts."""

from collections import Counter

import numpy as np
import pytest

from apo_pipeline.loops.pairs import candidate_groups, sppo_pairs, winner_vs_random, with_engine_logps
from apo_pipeline.loops.schedule import epoch_steps, split_segments, step_batches, steps_per_part
from apo_pipeline.ranking import PromptRanking, WinRates
from apo_pipeline.rollout import Candidate, Rollout


def test_split_segments_is_contiguous_and_balanced():
    parts = split_segments(list(range(11)), 3)
    assert [len(p) for p in parts] == [4, 4, 3]
    assert sum(parts, []) == list(range(11))
    with pytest.raises(ValueError, match="cannot fill"):
        split_segments([1, 2], 3)


def test_steps_per_part_sums_to_total():
    assert steps_per_part(10, 3) == [4, 3, 3] and sum(steps_per_part(7, 7)) == 7


def test_step_batches_cover_epochs_evenly_without_repeats_inside_a_batch():
    batches = step_batches(num_items=5, batch_size=3, num_steps=10, seed=1)
    assert all(len(b) == 3 and len(set(b)) == 3 for b in batches)
    counts = Counter(i for b in batches for i in b)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert step_batches(5, 3, 10, 1) == batches and step_batches(5, 3, 10, 2) != batches


def test_step_batches_clamps_to_dataset_size_and_rejects_empty():
    assert all(sorted(b) == [0, 1] for b in step_batches(2, 8, 3, 0))
    with pytest.raises(ValueError, match="dropped"):
        step_batches(0, 4, 1, 0)
    assert epoch_steps(10, 4, 2) == 5


def rollout(k: int) -> Rollout:
    cands = [Candidate([10 + i, 1], f"c{i}", "stop", -1.0 * i, 1.0) for i in range(k)]
    return Rollout("p", [5, 6], cands)


def test_failed_rankings_are_dropped_not_given_a_winner():
    rollouts = [rollout(3), rollout(3)]
    rollouts[0].prompt_ids = [7, 8]
    built = candidate_groups(rollouts, [PromptRanking(winner=2), PromptRanking(winner=None)])
    assert built.dropped == 1 and [g.prompt_ids for g in built.groups] == [[7, 8]]
    assert built.groups[0].preferred == 2 and len(built.groups[0].candidate_ids) == 3


def test_winner_vs_random_never_pairs_the_winner_with_itself():
    rollouts = [rollout(4) for _ in range(50)]
    built = winner_vs_random(rollouts, [PromptRanking(winner=1)] * 50, seed=0)
    assert all(g.candidate_ids[0] == [11, 1] and g.candidate_ids[1] != [11, 1] for g in built.groups)
    assert len({tuple(g.candidate_ids[1]) for g in built.groups}) == 3


def test_engine_logps_follow_each_groups_candidates():
    """Pairs (winner vs a drawn loser) get the sampling log-probs of exactly their two candidates."""
    rollouts = [rollout(4) for _ in range(20)] + [rollout(3)]
    rankings = [PromptRanking(winner=w % 4) for w in range(20)] + [PromptRanking(winner=None)]
    built = winner_vs_random(rollouts, rankings, seed=1)
    groups = with_engine_logps(built, rollouts)
    assert len(groups) == 20 and all(g.ref_logps == [-(c[0] - 10.0) for c in g.candidate_ids] for g in groups)
    every = with_engine_logps(candidate_groups(rollouts[:2], rankings[:2]), rollouts[:2])
    assert [g.ref_logps for g in every] == [[0.0, -1.0, -2.0, -3.0]] * 2


def test_sppo_pairs_carry_win_probabilities():
    wr = WinRates(raw=np.eye(3), win=np.eye(3), scores=np.array([0.1, 0.9, -0.5]), sppo_probs=None,
                  win_prob=np.array([0.5, 0.8, 0.2]), chosen=1, rejected=2, failures=0, partial_failures=0)
    failed = WinRates(raw=np.eye(3), win=np.eye(3), scores=None, sppo_probs=None, win_prob=None,
                      chosen=None, rejected=None, failures=1, partial_failures=0)
    built = sppo_pairs([rollout(3), rollout(3)], [wr, failed])
    assert built.dropped == 1
    g = built.groups[0]
    assert g.candidate_ids == [[11, 1], [12, 1]] and g.win_probs == [0.8, 0.2]
