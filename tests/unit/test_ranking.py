"""Iterative pairwise ranking and win-rate matrices against fake judges with known rewards."""

import math
import random

import numpy as np
import pytest

from apo_pipeline.ranking import iterative_ranking, win_rate_matrix


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


class Judge:
    """Bradley-Terry judge over rewards parsed from the text ("cand:<reward>"), with an optional
    first-position bias (logit added for the candidate shown first) and scripted failures."""

    def __init__(self, bias=0.0, fail=(), constant=None):
        self.bias, self.fail, self.constant = bias, set(fail), constant
        self.calls = []

    def __call__(self, requests):
        self.calls.append(list(requests))
        out = []
        for prompt, a, b in requests:
            if (prompt, a, b) in self.fail:
                out.append(None)
            elif self.constant is not None:
                out.append(self.constant)
            else:
                out.append(sig(reward(a) - reward(b) + self.bias))
        return out


def reward(text):
    return float(text.split(":")[1])


def cands(rewards):
    return [f"cand:{r}" for r in rewards]


def test_exactly_k_minus_one_rounds_one_call_each():
    rng = random.Random(0)
    k, n = 6, 4
    prompts = [f"p{i}" for i in range(n)]
    candidates = [cands([rng.uniform(-2, 2) for _ in range(k)]) for _ in range(n)]
    judge = Judge()
    out = iterative_ranking(prompts, candidates, judge, seed=0)
    assert out.judge_calls == len(judge.calls) == k - 1
    assert all(len(call) == 2 * n for call in judge.calls)
    assert out.totals["asked"] == 2 * n * (k - 1) and out.totals["judge_calls"] == k - 1
    for res in out.prompts:
        assert [c.round for c in res.comparisons] == list(range(1, k))
        assert [c.b for c in res.comparisons] == list(range(1, k))
        assert res.counts["comparisons"] == k - 1 and res.counts["asked"] == 2 * (k - 1)
    single = Judge()
    iterative_ranking(prompts, candidates, single, both_orders=False, seed=0)
    assert len(single.calls) == k - 1 and all(len(call) == n for call in single.calls)


def test_transitive_judge_finds_the_argmax():
    rng = random.Random(1)
    rewards = [[rng.uniform(-3, 3) for _ in range(6)] for _ in range(30)]
    out = iterative_ranking([f"p{i}" for i in range(30)], [cands(r) for r in rewards], Judge(), seed=0)
    assert [res.winner for res in out.prompts] == [int(np.argmax(r)) for r in rewards]


def test_both_orders_cancel_position_bias():
    prompts, candidates = ["p"], [cands([0.5, 1.0, 0.0])]
    one = iterative_ranking(prompts, candidates, Judge(bias=3.0), both_orders=False, seed=0)
    assert one.prompts[0].winner == 0, "the incumbent, always shown first, wins with one order"
    both = iterative_ranking(prompts, candidates, Judge(bias=3.0), seed=0)
    assert both.prompts[0].winner == 1
    first = both.prompts[0].comparisons[0]
    expected = (sig(-0.5 + 3.0) + 1.0 - sig(0.5 + 3.0)) / 2
    assert math.isclose(first.p, expected) and first.p_ab is not None and first.p_ba is not None


def test_failure_gives_no_winner_and_is_counted():
    prompts = ["p0", "p1"]
    candidates = [cands([0.0, 1.0, 2.0, 3.0]), cands([3.0, 2.0, 1.0, 0.0])]
    c = candidates[0]
    judge = Judge(fail={("p0", c[1], c[2]), ("p0", c[2], c[1])})
    out = iterative_ranking(prompts, candidates, judge, seed=0)
    assert out.prompts[0].winner is None
    assert out.prompts[0].counts["failures"] == 1 and out.prompts[0].counts["comparisons"] == 2
    assert out.prompts[1].winner == 0 and out.prompts[1].counts["failures"] == 0
    assert len(judge.calls[2]) == 2, "the failed prompt is not asked again"
    assert out.totals["failures"] == 1


def test_partial_failure_uses_the_other_order():
    candidates = [cands([0.0, 1.0, 2.0])]
    c = candidates[0]
    out = iterative_ranking(["p"], candidates, Judge(bias=0.0, fail={("p", c[2], c[1])}), seed=0)
    res = out.prompts[0]
    assert res.winner == 2 and res.counts["partial_failures"] == 1 and res.counts["failures"] == 0
    assert math.isclose(res.comparisons[1].p, sig(-1.0)) and res.comparisons[1].p_ba is None


def test_ties_are_broken_by_a_seeded_coin():
    prompts = [f"p{i}" for i in range(20)]
    candidates = [cands([0.0] * 4) for _ in prompts]

    def winners(seed):
        out = iterative_ranking(prompts, candidates, Judge(constant=0.5), seed=seed)
        assert out.totals["ties"] == 3 * len(prompts)
        assert all(c.tie for res in out.prompts for c in res.comparisons)
        return [res.winner for res in out.prompts]

    assert winners(7) == winners(7)
    assert winners(7) != winners(8)


def test_tie_breaks_do_not_depend_on_batch_position():
    """A prompt's coin is its own: ranked alone, in another order or in a shard of the batch (a
    judge pool of any size), it gets the same winner."""
    prompts = [f"p{i}" for i in range(12)]
    candidates = [cands([0.0] * 4) for _ in prompts]

    def winners(ps, cs):
        return [r.winner for r in iterative_ranking(ps, cs, Judge(constant=0.5), seed=3).prompts]

    whole = winners(prompts, candidates)
    assert len(set(whole)) > 1  # the coins differ between prompts
    assert winners(prompts[5:], candidates[5:]) + winners(prompts[:5], candidates[:5]) == whole[5:] + whole[:5]
    assert winners(prompts[::-1], candidates[::-1]) == whole[::-1]


def test_judge_contract_errors():
    with pytest.raises(ValueError, match="not a probability"):
        iterative_ranking(["p"], [cands([0, 1])], lambda reqs: [1.5] * len(reqs))
    with pytest.raises(ValueError, match="returned 1 results for 2"):
        iterative_ranking(["p"], [cands([0, 1])], lambda reqs: [0.5])
    with pytest.raises(ValueError, match="no candidates"):
        iterative_ranking(["p"], [[]], Judge())
    nan = iterative_ranking(["p"], [cands([0, 1])], lambda reqs: [float("nan")] * len(reqs))
    assert nan.prompts[0].winner is None


def test_single_candidate_and_ragged_k():
    judge = Judge()
    out = iterative_ranking(["a", "b"], [cands([1.0]), cands([0.0, 2.0, 1.0])], judge, seed=0)
    assert out.prompts[0].winner == 0 and out.prompts[0].comparisons == []
    assert out.prompts[1].winner == 1 and len(judge.calls) == 2


def test_win_rate_matrix_and_sppo_scores():
    r = [0.3, -1.0, 1.2, 0.0]
    judge = Judge()
    (wr,) = win_rate_matrix(["p"], [cands(r)], judge)
    assert len(judge.calls) == 1 and len(judge.calls[0]) == 12
    k = len(r)
    bt = np.array([[sig(r[i] - r[j]) for j in range(k)] for i in range(k)])
    np.testing.assert_allclose(wr.raw, bt)
    np.testing.assert_allclose(wr.win, bt)
    # logits C_ij = r_i - r_j, so s_i = mean_j 2 (r_i - r_j) = 2 (r_i - mean r)
    s = 2 * (np.array(r) - np.mean(r))
    np.testing.assert_allclose(wr.scores, s, atol=1e-9)
    p = 1 / (1 + np.exp(-(s[:, None] - s[None, :])))
    np.testing.assert_allclose(wr.sppo_probs, p, atol=1e-9)
    np.testing.assert_allclose(wr.win_prob, p.mean(axis=1), atol=1e-9)
    assert wr.chosen == 2 and wr.rejected == 1 and wr.failures == 0


def test_win_rate_matrix_cancels_position_bias_and_handles_failures():
    r = [0.3, -1.0, 1.2]
    (biased,) = win_rate_matrix(["p"], [cands(r)], Judge(bias=2.0))
    (clean,) = win_rate_matrix(["p"], [cands(r)], Judge())
    np.testing.assert_allclose(biased.scores, clean.scores, atol=1e-9)  # C - C^T cancels a logit bias
    c = cands(r)
    (partial,) = win_rate_matrix(["p"], [c], Judge(fail={("p", c[0], c[2])}))
    assert partial.partial_failures == 1 and np.isnan(partial.raw[0, 2])
    np.testing.assert_allclose(partial.scores, clean.scores, atol=1e-9)
    (failed,) = win_rate_matrix(["p"], [c], Judge(fail={("p", c[0], c[2]), ("p", c[2], c[0])}))
    assert failed.failures == 1 and failed.scores is None and failed.chosen is None
    assert np.isnan(failed.win[0, 2]) and failed.win[0, 1] == clean.win[0, 1]
