"""The streamed round's schedule (loops/stream_plan.py): chunks, unlocked steps, seeded batches."""

import pytest

from apo_pipeline.loops.stream_plan import (
    StreamBatches, chunk_sizes, cut, ready_per_step, stream_batches, unlocked_steps,
)
from apo_pipeline.seeds import derive_seed


def seed_of(step: int) -> int:
    return derive_seed(0, "stream-batches", 1, step)


def test_chunks_are_full_then_the_rest_in_order():
    assert chunk_sizes(40, 16) == [16, 16, 8] and chunk_sizes(8, 16) == [8] and chunk_sizes(32, 16) == [16, 16]
    assert cut(list("abcde"), 2) == [(0, ["a", "b"]), (2, ["c", "d"]), (4, ["e"])]
    with pytest.raises(ValueError, match="chunk"):
        chunk_sizes(8, 0)


def test_steps_unlock_in_proportion_to_the_prompts_ready():
    """floor(S P_j / P): S = 5 steps over chunks of 16, 16, 8 prompts (P = 40)."""
    assert unlocked_steps([16, 16, 8], 5) == [2, 4, 5]
    assert unlocked_steps([4, 4], 3) == [1, 3]
    assert unlocked_steps([1, 1, 1, 1], 2) == [0, 1, 1, 2]  # no step before half the prompts
    assert unlocked_steps([8], 3) == [3]  # one chunk: every step after it, as a sequential round


def test_each_step_sees_the_groups_ready_when_it_was_unlocked():
    assert ready_per_step([2, 4, 5], [14, 30, 37]) == [14, 14, 30, 30, 37]
    assert ready_per_step([0, 1, 1, 2], [3, 6, 9, 12]) == [6, 12]
    # the judge dropped every prompt of chunk 1: its step waits for chunk 2's groups
    assert ready_per_step([1, 3], [0, 5]) == [5, 5, 5]
    assert ready_per_step([1], [0]) == []


def test_batches_are_deterministic_and_use_each_ready_group_once_per_pass():
    ready = ready_per_step([2, 4, 5], [16, 32, 40])
    batches = stream_batches(ready, 8, seed_of)
    assert batches == stream_batches(ready, 8, seed_of)
    assert batches != stream_batches(ready, 8, lambda n: derive_seed(1, "stream-batches", 1, n))
    for batch, r in zip(batches, ready):
        assert len(batch) == 8 == len(set(batch)) and max(batch) < r
    assert sorted(i for b in batches for i in b) == list(range(40))  # 5 x 8 = 40: one pass, no repeats


def test_a_new_pass_starts_when_the_ready_groups_are_used_up():
    draw = StreamBatches(6, seed_of)
    first, second = draw.next(8), draw.next(8)  # 8 groups, batches of 6: the second batch starts a pass
    assert len(set(second)) == 6 and set(first) | set(second) == set(range(8))
    assert len(draw.next(8)) == 6
    assert sorted(StreamBatches(16, seed_of).next(5)) == [0, 1, 2, 3, 4]  # fewer groups than a batch: all of them
    with pytest.raises(ValueError, match="dropped"):
        StreamBatches(4, seed_of).next(0)
