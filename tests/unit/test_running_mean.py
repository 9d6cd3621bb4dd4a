"""BCO's running delta: the count-weighted mean of every implicit reward folded in so far."""

import pytest

from apo_pipeline.losses.running_mean import RunningMean


def test_running_mean_is_the_mean_of_every_value_seen():
    batches = [[0.5, -1.0, 2.0], [], [3.0], [-0.25, 0.75]]
    running, seen = RunningMean(), []
    assert running.mean == 0.0
    for values in batches:
        seen += values
        got = running.update(sum(values), len(values))
        assert got == pytest.approx(sum(seen) / len(seen)) and running.count == len(seen)


def test_folding_ranks_separately_or_summed_is_the_same():
    split, summed = RunningMean(), RunningMean()
    split.update(1.0, 2)
    split.update(5.0, 3)
    summed.update(6.0, 5)
    assert split.mean == pytest.approx(summed.mean) and split.count == summed.count


def test_state_round_trip_and_bad_count():
    running = RunningMean()
    running.update(3.0, 4)
    restored = RunningMean.from_state(running.state())
    assert restored == running
    assert RunningMean.from_state(None) == RunningMean()
    with pytest.raises(ValueError, match="count"):
        running.update(1.0, -1)
