"""MC kernel: empirical frequencies vs softmax weights (chi-square), variants, the i-SIR chain."""

import itertools

import numpy as np
import pytest
import torch

from apo_pipeline.mc_kernel import sample_negatives

# Upper 0.001 quantiles of the chi-square distribution (tabulated), by degrees of freedom.
CHI2_999 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515, 6: 22.458}
BETA = 0.5


def chi2(counts, expected) -> float:
    counts, expected = np.asarray(counts, float), np.asarray(expected, float)
    return float(((counts - expected) ** 2 / expected).sum())


def np_weights(policy, ref, preferred, beta=BETA):
    z = beta * (np.asarray(policy, float) - np.asarray(ref, float))
    z[preferred] = -np.inf
    e = np.exp(z - z[np.isfinite(z)].max())
    return e / e.sum()


def repeated(policy, ref, preferred, n):
    """n identical prompts, so one call yields n independent draws for the same weights."""
    p = torch.tensor([policy] * n, dtype=torch.float32)
    r = torch.tensor([ref] * n, dtype=torch.float32)
    return p, r, torch.full((n,), preferred, dtype=torch.long)


POLICY = [-10.0, -12.0, -9.0, -15.0, -11.0, -13.5]
REF = [-11.0, -11.5, -12.0, -13.0, -11.0, -12.0]


def test_weights_and_entropy_are_the_masked_softmax():
    p, r, w = repeated(POLICY, REF, 2, 3)
    out = sample_negatives(p, r, w, 1, beta=BETA, generator=torch.Generator().manual_seed(0))
    q = np_weights(POLICY, REF, 2)
    np.testing.assert_allclose(out.weights[0].numpy(), q, rtol=1e-6)
    assert out.weights[0, 2] == 0.0
    nz = q[q > 0]
    np.testing.assert_allclose(out.entropy.numpy(), -(nz * np.log(nz)).sum(), rtol=1e-6)


def test_mc_frequencies_match_weights_chi_square():
    n = 20000
    p, r, w = repeated(POLICY, REF, 2, n)
    out = sample_negatives(p, r, w, 1, beta=BETA, generator=torch.Generator().manual_seed(1))
    q = np_weights(POLICY, REF, 2)
    counts = np.bincount(out.indices[:, 0].numpy(), minlength=6)
    assert counts[2] == 0
    keep = q > 0
    assert chi2(counts[keep], n * q[keep]) < CHI2_999[int(keep.sum()) - 1]


def test_mc_without_replacement_matches_successive_sampling_chi_square():
    """M = 2: the unordered pair {i, j} has probability q_i q_j / (1 - q_i) + q_j q_i / (1 - q_j)."""
    n = 20000
    policy, ref = POLICY[:5], REF[:5]
    p, r, w = repeated(policy, ref, 0, n)
    out = sample_negatives(p, r, w, 2, beta=BETA, generator=torch.Generator().manual_seed(2))
    q = np_weights(policy, ref, 0)
    pairs = list(itertools.combinations(range(1, 5), 2))
    expected = [q[i] * q[j] / (1 - q[i]) + q[j] * q[i] / (1 - q[j]) for i, j in pairs]
    assert abs(sum(expected) - 1) < 1e-12
    drawn = [tuple(sorted(row)) for row in out.indices.tolist()]
    counts = [drawn.count(pair) for pair in pairs]
    assert chi2(counts, n * np.asarray(expected)) < CHI2_999[len(pairs) - 1]


@pytest.mark.parametrize(("variant", "steps", "proposal_size"), [("mc", 1, None), ("random", 1, None), ("mc", 3, 2)])
def test_never_the_preferred_and_no_duplicates(variant, steps, proposal_size):
    g = torch.Generator().manual_seed(3)
    b, k, m = 400, 8, 4
    p = torch.randn(b, k, generator=g) * 5
    r = torch.randn(b, k, generator=g) * 5
    w = torch.randint(0, k, (b,), generator=g)
    out = sample_negatives(p, r, w, m, beta=1.0, variant=variant, steps=steps, proposal_size=proposal_size, generator=g)
    assert out.indices.shape == (b, m) and out.indices.dtype == torch.long
    assert not (out.indices == w[:, None]).any()
    assert all(len(set(row)) == m for row in out.indices.tolist())
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(b))


def test_max_and_min_take_the_extreme_weights():
    g = torch.Generator().manual_seed(4)
    b, k, m = 50, 7, 3
    p, r = torch.randn(b, k, generator=g), torch.randn(b, k, generator=g)
    w = torch.randint(0, k, (b,), generator=g)
    top = sample_negatives(p, r, w, m, beta=BETA, variant="max")
    low = sample_negatives(p, r, w, m, beta=BETA, variant="min")
    for i in range(b):
        z = (p[i] - r[i]).numpy().astype(float)
        order = [j for j in np.argsort(-z) if j != w[i]]
        assert set(top.indices[i].tolist()) == set(order[:m])
        assert set(low.indices[i].tolist()) == set(order[-m:])


def test_random_is_uniform_whatever_the_weights():
    n = 12000
    peaked_policy = [0.0, 40.0, -40.0, 0.0, 5.0]
    p, r, w = repeated(peaked_policy, [0.0] * 5, 3, n)
    out = sample_negatives(p, r, w, 1, beta=1.0, variant="random", generator=torch.Generator().manual_seed(5))
    counts = np.bincount(out.indices[:, 0].numpy(), minlength=5)
    assert counts[3] == 0
    assert chi2(counts[[0, 1, 2, 4]], [n / 4] * 4) < CHI2_999[3]


def test_seeded_reproducibility():
    g = torch.Generator().manual_seed(6)
    p, r = torch.randn(64, 6, generator=g), torch.randn(64, 6, generator=g)
    w = torch.randint(0, 6, (64,), generator=g)

    def draw(seed, **kw):
        return sample_negatives(p, r, w, 2, beta=1.0, generator=torch.Generator().manual_seed(seed), **kw).indices

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))
    assert torch.equal(draw(7, steps=4, proposal_size=1), draw(7, steps=4, proposal_size=1))


def chain_transition(q):
    """Exact i-SIR step with one proposal: from i, propose j uniform among the other eligible
    candidates and move there with probability q_j / (q_i + q_j)."""
    idx = np.flatnonzero(q > 0)
    t = np.zeros((len(q), len(q)))
    for i in idx:
        for j in idx:
            if i != j:
                t[i, j] = q[j] / (q[i] + q[j]) / (len(idx) - 1)
        t[i, i] = 1 - t[i].sum()
    return t


def test_chain_marginals_match_the_exact_transition_matrix():
    n = 20000
    policy, ref = [-3.0, -9.0, -1.0, -6.0, -2.0], [-4.0, -4.0, -4.0, -4.0, -4.0]
    p, r, w = repeated(policy, ref, 0, n)
    q = np_weights(policy, ref, 0, beta=1.0)
    t = chain_transition(q)
    start = np.where(q > 0, 1.0, 0.0) / 4
    for steps, seed in ((1, 10), (2, 11)):
        g = torch.Generator().manual_seed(seed)
        out = sample_negatives(p, r, w, 1, beta=1.0, steps=steps, proposal_size=1, generator=g)
        counts = np.bincount(out.indices[:, 0].numpy(), minlength=5)[1:]
        exact = (start @ np.linalg.matrix_power(t, steps))[1:]
        assert chi2(counts, n * exact) < CHI2_999[3]
        assert chi2(counts, n * q[1:]) > 10 * CHI2_999[3], "a short chain with one proposal is far from q"


def test_long_chain_converges_to_the_kernel_weights():
    n = 20000
    policy, ref = [-3.0, -9.0, -1.0, -6.0, -2.0], [-4.0] * 5
    p, r, w = repeated(policy, ref, 0, n)
    q = np_weights(policy, ref, 0, beta=1.0)
    steps = 20
    exact = (np.where(q > 0, 0.25, 0.0) @ np.linalg.matrix_power(chain_transition(q), steps))
    assert 0.5 * np.abs(exact - q).sum() < 1e-3, "20 steps mix this chain (exact total variation)"
    g = torch.Generator().manual_seed(12)
    out = sample_negatives(p, r, w, 1, beta=1.0, steps=steps, proposal_size=1, generator=g)
    counts = np.bincount(out.indices[:, 0].numpy(), minlength=5)[1:]
    assert chi2(counts, n * q[1:]) < CHI2_999[3]


@pytest.mark.parametrize(
    ("m", "kwargs", "match"),
    [
        (5, {}, r"M = 5 must be in \[1, K-1\] = \[1, 4\]"),
        (0, {}, "M = 0"),
        (1, {"variant": "best"}, "variant"),
        (1, {"steps": 3}, "proposal_size"),
        (1, {"variant": "max", "steps": 2, "proposal_size": 1}, "'mc' chain only"),
        (2, {"steps": 2, "proposal_size": 2}, r"proposal_size L = 2 must be in \[1, K-1-M\)"),
        (1, {"steps": 0}, "steps"),
    ],
)
def test_validation(m, kwargs, match):
    p = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=match):
        sample_negatives(p, p, torch.tensor([0, 1]), m, beta=1.0, **kwargs)


def test_bad_preferred_and_shapes():
    p = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="preferred"):
        sample_negatives(p, p, torch.tensor([0, 5]), 1, beta=1.0)
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        sample_negatives(p, torch.zeros(2, 4), torch.tensor([0, 1]), 1, beta=1.0)
