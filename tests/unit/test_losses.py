"""Each loss against an independent plain-float formula, gradchecks, and the stated identities."""

import math

import numpy as np
import pytest
import torch

from apo_pipeline.losses import list_losses, loss_spec, preference_loss

BETA = 0.3
B, M = 5, 3


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def make_batch(seed: int = 0, m: int | None = None, dtype=torch.float64):
    """Summed log-probs (nats) of responses of 4..30 tokens, policy near the reference."""
    rng = np.random.default_rng(seed)
    shape = (B,) if m is None else (B, m)
    lc = rng.integers(4, 30, B).astype(float)
    lr = rng.integers(4, 30, shape).astype(float)
    rc = -lc * rng.uniform(0.5, 2.0, B)
    rr = -lr * rng.uniform(0.5, 2.0, shape)
    c = rc + rng.normal(0, 2.0, B)
    r = rr + rng.normal(0, 2.0, shape)
    return {k: torch.tensor(v, dtype=dtype) for k, v in dict(c=c, r=r, rc=rc, rr=rr, lc=lc, lr=lr).items()}


# Independent per-pair formulas in plain floats: f(c, r, rc, rr, lc, lr, beta) for one (y_w, y_l).
def _h(c, r, rc, rr, beta):
    return beta * ((c - rc) - (r - rr))


def _exo(c, r, rc, rr, lc, lr, beta, eps=1e-3):
    p = sig(_h(c, r, rc, rr, beta))
    return p * (math.log(p) - math.log(1 - eps)) + (1 - p) * (math.log(1 - p) - math.log(eps))


CASES = {
    "dpo": ({}, lambda c, r, rc, rr, lc, lr, b: -logsig(_h(c, r, rc, rr, b))),
    "dpo_smoothed": (
        {"label_smoothing": 0.1},
        lambda c, r, rc, rr, lc, lr, b: -0.9 * logsig(_h(c, r, rc, rr, b)) - 0.1 * logsig(-_h(c, r, rc, rr, b)),
    ),
    "dpo_robust": (
        {"label_smoothing": 0.1, "robust": True},
        lambda c, r, rc, rr, lc, lr, b: (-0.9 * logsig(_h(c, r, rc, rr, b)) + 0.1 * logsig(-_h(c, r, rc, rr, b))) / 0.8,
    ),
    "ipo": ({}, lambda c, r, rc, rr, lc, lr, b: ((c - rc) - (r - rr) - 1 / (2 * b)) ** 2),
    "ipo_normalized": (
        {"ipo_length_normalize": True},
        lambda c, r, rc, rr, lc, lr, b: ((c - rc) / lc - (r - rr) / lr - 1 / (2 * b)) ** 2,
    ),
    "sppo": ({}, lambda c, r, rc, rr, lc, lr, b: 0.5 * ((c - rc - 0.5 / b) ** 2 + (r - rr + 0.5 / b) ** 2)),
    "sppo_soft": (
        {"win_prob_chosen": 0.7, "win_prob_rejected": 0.4},
        lambda c, r, rc, rr, lc, lr, b: 0.5 * ((c - rc - 0.2 / b) ** 2 + (r - rr + 0.1 / b) ** 2),
    ),
    "nca": (
        {},
        lambda c, r, rc, rr, lc, lr, b: (
            -logsig(b * (c - rc)) - 0.5 * logsig(-b * (c - rc)) - 0.5 * logsig(-b * (r - rr))
        ),
    ),
    "simpo": ({}, lambda c, r, rc, rr, lc, lr, b: -logsig(b * c / lc - b * r / lr - 0.5)),
    "simpo_gamma": ({"gamma": 1.2}, lambda c, r, rc, rr, lc, lr, b: -logsig(b * c / lc - b * r / lr - 1.2)),
    "cpo": ({}, lambda c, r, rc, rr, lc, lr, b: -logsig(b * (c - r)) - c / lc),
    "cpo_weighted": ({"sft_weight": 0.25}, lambda c, r, rc, rr, lc, lr, b: -logsig(b * (c - r)) - 0.25 * c / lc),
    "rpo": ({}, lambda c, r, rc, rr, lc, lr, b: -logsig(_h(c, r, rc, rr, b)) - c / lc),
    "exo": ({}, _exo),
    "exo_eps": ({"exo_eps": 0.05}, lambda *a: _exo(*a, eps=0.05)),
    "bco": (
        {"bco_delta": 0.2},
        lambda c, r, rc, rr, lc, lr, b: -logsig(b * (c - rc) - 0.2) - logsig(-(b * (r - rr) - 0.2)),
    ),
    "kto": (
        {"kto_kl": 0.15},
        lambda c, r, rc, rr, lc, lr, b: (1 - sig(b * (c - rc - 0.15))) + (1 - sig(b * (0.15 - (r - rr)))),
    ),
    "kto_negative_kl": (  # z0 is clamped at 0
        {"kto_kl": -3.0},
        lambda c, r, rc, rr, lc, lr, b: (1 - sig(b * (c - rc))) + (1 - sig(-b * (r - rr))),
    ),
    "apo_zero": ({}, lambda c, r, rc, rr, lc, lr, b: (1 - sig(b * (c - rc))) + sig(b * (r - rr))),
    "spo": ({}, lambda c, r, rc, rr, lc, lr, b: -logsig(_h(c, r, rc, rr, b)) - logsig(b * (c - rc))),
    "spo_lambda": (
        {"spo_lambda": 0.3},
        lambda c, r, rc, rr, lc, lr, b: -logsig(_h(c, r, rc, rr, b)) - 0.3 * logsig(b * (c - rc)),
    ),
    "spo_hinge": (
        {"spo_lambda": 0.7, "spo_regulariser": "hinge"},
        lambda c, r, rc, rr, lc, lr, b: -logsig(_h(c, r, rc, rr, b)) + 0.7 * max(0.0, -b * (c - rc)),
    ),
    "spo_sft_step": (  # the always-active hinge against a one-SFT-step target has value 0
        {"spo_lambda": 0.7, "spo_regulariser": "sft_step"},
        lambda c, r, rc, rr, lc, lr, b: -logsig(_h(c, r, rc, rr, b)),
    ),
    "rnce": ({}, lambda c, r, rc, rr, lc, lr, b: -logsig(_h(c, r, rc, rr, b))),
}


def loss_name(case: str) -> str:
    return next(n for n in sorted(list_losses(), key=len, reverse=True) if case == n or case.startswith(n + "_"))


def pair(v, i, j=None):
    """(c, r, rc, rr, lc, lr) of example i as plain floats; negative j when rejected is [B, M]."""
    neg = (lambda x: x[i]) if j is None else (lambda x: x[i][j])
    return v["c"][i], neg(v["r"]), v["rc"][i], neg(v["rr"]), v["lc"][i], neg(v["lr"])


def call(name, d, **options):
    return preference_loss(
        name, d["c"], d["r"], d["rc"], d["rr"], beta=BETA, chosen_lengths=d["lc"], rejected_lengths=d["lr"], **options
    )


def test_every_loss_has_a_closed_form_case():
    assert {loss_name(c) for c in CASES} == set(list_losses())
    assert set(list_losses()) == {
        "dpo", "ipo", "sppo", "rnce", "nca", "simpo", "cpo", "rpo", "exo", "bco", "kto", "apo_zero", "spo"
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_pair_loss_matches_closed_form(case):
    options, formula = CASES[case]
    d = make_batch(seed=1)
    out = call(loss_name(case), d, **options)
    v = {k: t.tolist() for k, t in d.items()}
    expected = [formula(*pair(v, i), BETA) for i in range(B)]
    np.testing.assert_allclose(out.per_example.detach().numpy(), expected, rtol=1e-10, atol=1e-12)
    assert out.loss.shape == () and math.isclose(out.loss.item(), float(np.mean(expected)), rel_tol=1e-10)


@pytest.mark.parametrize("case", sorted(c for c in CASES if loss_name(c) != "rnce"))
def test_pairwise_losses_average_over_negatives(case):
    options, formula = CASES[case]
    d = make_batch(seed=2, m=M)
    out = call(loss_name(case), d, **options)
    v = {k: t.tolist() for k, t in d.items()}
    expected = [np.mean([formula(*pair(v, i, j), BETA) for j in range(M)]) for i in range(B)]
    np.testing.assert_allclose(out.per_example.detach().numpy(), expected, rtol=1e-10)


def test_rnce_closed_form_with_m_negatives():
    d = make_batch(seed=3, m=M)
    out = call("rnce", d)
    a = (d["c"] - d["rc"]).numpy() * BETA
    b = (d["r"] - d["rr"]).numpy() * BETA
    expected = [-a[i] + math.log(math.exp(a[i]) + sum(math.exp(x) for x in b[i])) for i in range(B)]
    np.testing.assert_allclose(out.per_example.detach().numpy(), expected, rtol=1e-10)
    p = [math.exp(a[i]) / (math.exp(a[i]) + sum(math.exp(x) for x in b[i])) for i in range(B)]
    assert math.isclose(out.metrics["rnce/p_chosen"], float(np.mean(p)), rel_tol=1e-9)


def test_kto_default_kl_is_the_batch_estimate():
    d = make_batch(seed=4)
    out = call("kto", d)
    a = (d["c"] - d["rc"]).tolist()
    b = (d["r"] - d["rr"]).tolist()
    z_w, z_l = max(np.mean(b), 0.0), max(np.mean(a), 0.0)
    expected = [(1 - sig(BETA * (a[i] - z_w))) + (1 - sig(BETA * (z_l - b[i]))) for i in range(B)]
    np.testing.assert_allclose(out.per_example.detach().numpy(), expected, rtol=1e-10)
    assert math.isclose(out.metrics["kto/z0_chosen_term"], z_w, abs_tol=1e-12)


# spo_sft_step's term has value 0 and a gradient by construction (a stop-gradient target): finite
# differences cannot see it; test_spo_regularisers_gradients_on_the_chosen_log_prob checks it.
@pytest.mark.parametrize("case", sorted(set(CASES) - {"spo_sft_step"}))
def test_gradcheck_float64(case):
    options, _ = CASES[case]
    name = loss_name(case)
    d = make_batch(seed=5, m=M if name == "rnce" else None)

    def f(c, r):
        return preference_loss(
            name, c, r, d["rc"], d["rr"], beta=BETA, chosen_lengths=d["lc"], rejected_lengths=d["lr"], **options
        ).loss

    assert torch.autograd.gradcheck(f, (d["c"].clone().requires_grad_(), d["r"].clone().requires_grad_()))


def grads(name, d, **options):
    c, r = d["c"].clone().requires_grad_(), d["r"].clone().requires_grad_()
    out = preference_loss(name, c, r, d["rc"], d["rr"], beta=BETA, chosen_lengths=d["lc"], **options)
    out.loss.backward()
    return out, c.grad, r.grad


def test_rnce_with_one_negative_equals_dpo():
    d = make_batch(seed=6)
    one = {**d, "r": d["r"][:, None], "rr": d["rr"][:, None]}
    out_r, gc_r, gr_r = grads("rnce", one)
    out_d, gc_d, gr_d = grads("dpo", d)
    torch.testing.assert_close(out_r.per_example, out_d.per_example)
    torch.testing.assert_close(gc_r, gc_d)
    torch.testing.assert_close(gr_r[:, 0], gr_d)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("rpo", {"sft_weight": 0.0}), ("dpo", {"label_smoothing": 0.0}), ("spo", {"spo_lambda": 0.0}),
        ("spo", {"spo_lambda": 0.0, "spo_regulariser": "hinge"}),
        ("spo", {"spo_lambda": 0.0, "spo_regulariser": "sft_step"}),
    ],
)
def test_reductions_to_plain_dpo(name, options):
    d = make_batch(seed=7)
    out, gc, gr = grads(name, d, **options)
    ref, gc_d, gr_d = grads("dpo", d)
    assert torch.equal(out.per_example, ref.per_example)
    torch.testing.assert_close(gc, gc_d)
    torch.testing.assert_close(gr, gr_d)


def test_spo_regularisers_gradients_on_the_chosen_log_prob():
    """hinge: lambda beta on y_w below the reference, nothing above; sft_step: lambda beta always
    (the SFT gradient); softplus: lambda beta sigma(-r_w). The rejected side is DPO's in every case."""
    d = make_batch(seed=0)
    lam = 0.5
    _, gc_d, gr_d = grads("dpo", d)
    below = (d["c"] < d["rc"]).double()
    reward = BETA * (d["c"] - d["rc"])
    for kind, extra in (("hinge", lam * BETA * below), ("sft_step", lam * BETA * torch.ones(B, dtype=torch.float64)),
                        ("softplus", lam * BETA * torch.sigmoid(-reward))):
        _, gc, gr = grads("spo", d, spo_lambda=lam, spo_regulariser=kind)
        torch.testing.assert_close(gc, gc_d - extra / B)  # the loss is the batch mean: 1/B per example
        torch.testing.assert_close(gr, gr_d)
    assert 0 < below.sum() < B  # the batch has y_w both below and above the reference


def test_cdpo_unit_weights_equal_dpo_in_value_and_gradient():
    d = make_batch(seed=8)
    out, gc, gr = grads("dpo", d, pos_weight=1.0, neg_weight=1.0)
    ref, gc_d, gr_d = grads("dpo", d)
    assert torch.equal(out.loss, ref.loss) and torch.equal(gc, gc_d) and torch.equal(gr, gr_d)


def test_cdpo_weights_scale_each_part_and_keep_the_value():
    d = make_batch(seed=9)
    ref, gc_d, gr_d = grads("dpo", d)
    out, gc, gr = grads("dpo", d, pos_weight=0.0, neg_weight=0.4)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-14, atol=0)
    assert torch.equal(gc, torch.zeros_like(gc))
    torch.testing.assert_close(gr, 0.4 * gr_d)
    out, gc, gr = grads("rpo", d, pos_weight=0.25)  # works for every loss: the NLL part is scaled too
    _, gc_full, gr_full = grads("rpo", d)
    torch.testing.assert_close(gc, 0.25 * gc_full)
    torch.testing.assert_close(gr, gr_full)


def test_per_example_weights():
    d = make_batch(seed=10)
    w = torch.tensor([0.0, 1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    out = call("dpo", d, weights=w)
    torch.testing.assert_close(out.loss, (w * out.per_example).mean())
    plain = call("dpo", d)
    assert torch.equal(out.per_example, plain.per_example)


def test_standard_metrics():
    d = make_batch(seed=11, m=M)
    out = call("dpo", d)
    rw = BETA * (d["c"] - d["rc"])
    rl = BETA * (d["r"] - d["rr"])
    margin = rw[:, None] - rl
    assert math.isclose(out.metrics["rewards/chosen"], rw.mean().item(), rel_tol=1e-9)
    assert math.isclose(out.metrics["rewards/rejected"], rl.mean().item(), rel_tol=1e-9)
    assert math.isclose(out.metrics["margin"], margin.mean().item(), rel_tol=1e-9)
    assert math.isclose(out.metrics["accuracy"], (margin > 0).double().mean().item(), rel_tol=1e-9)
    assert all(isinstance(v, float) for v in out.metrics.values())


def test_bco_reports_the_batch_mean_reward():
    d = make_batch(seed=12)
    out = call("bco", d, bco_delta=0.0)
    expected = torch.cat([BETA * (d["c"] - d["rc"]), BETA * (d["r"] - d["rr"])]).mean().item()
    assert math.isclose(out.metrics["bco/reward_mean"], expected, rel_tol=1e-9)


def test_reference_free_losses_accept_none():
    d = make_batch(seed=13)
    with_ref = call("simpo", d)
    lengths = {"chosen_lengths": d["lc"], "rejected_lengths": d["lr"]}
    without = preference_loss("simpo", d["c"], d["r"], None, None, beta=BETA, **lengths)
    assert torch.equal(with_ref.per_example, without.per_example)
    preference_loss("cpo", d["c"], d["r"], None, None, beta=BETA, chosen_lengths=d["lc"])
    assert loss_spec("simpo").reference_free and not loss_spec("dpo").reference_free
    assert loss_spec("rnce").native_multi_negative


def test_float32_inputs_stay_float32():
    d = make_batch(seed=14, dtype=torch.float32)
    out = call("dpo", d)
    assert out.loss.dtype == torch.float32 and out.per_example.shape == (B,)


@pytest.mark.parametrize(
    ("name", "kwargs", "needle"),
    [
        ("dpo", {"gamma": 0.5}, "'gamma'"),
        ("simpo", {"label_smoothing": 0.1}, "'label_smoothing'"),
        ("bco", {}, "'bco_delta'"),
        ("dpo", {"label_smoothing": 0.5}, "'label_smoothing'"),
        ("exo", {"exo_eps": 0.0}, "'exo_eps'"),
        ("sppo", {"win_prob_chosen": 1.5}, "'win_prob_chosen'"),
        ("rpo", {"sft_weight": -1.0}, "'sft_weight'"),
        ("spo", {"spo_regulariser": "relu"}, "'spo_regulariser'"),
    ],
)
def test_bad_options_raise_naming_option_and_loss(name, kwargs, needle):
    d = make_batch()
    with pytest.raises(ValueError) as err:
        preference_loss(name, d["c"], d["r"], d["rc"], d["rr"], beta=BETA, **kwargs)
    assert needle in str(err.value) and repr(name) in str(err.value)


@pytest.mark.parametrize(
    ("name", "kwargs", "needle"),
    [
        ("simpo", {}, "'chosen_lengths'"),
        ("rpo", {}, "'chosen_lengths'"),
        ("ipo", {"ipo_length_normalize": True}, "'chosen_lengths'"),
    ],
)
def test_missing_lengths_raise(name, kwargs, needle):
    d = make_batch()
    with pytest.raises(ValueError, match=needle):
        preference_loss(name, d["c"], d["r"], d["rc"], d["rr"], beta=BETA, **kwargs)


def test_input_validation():
    d = make_batch()
    with pytest.raises(ValueError, match="unknown loss 'dpx'"):
        preference_loss("dpx", d["c"], d["r"], d["rc"], d["rr"], beta=BETA)
    with pytest.raises(ValueError, match="ref_chosen_logps"):
        preference_loss("dpo", d["c"], d["r"], None, None, beta=BETA)
    with pytest.raises(ValueError, match="rejected_logps"):
        preference_loss("dpo", d["c"], d["r"][:3], d["rc"], d["rr"][:3], beta=BETA)
    with pytest.raises(ValueError, match="ref_rejected_logps"):
        preference_loss("dpo", d["c"], d["r"], d["rc"], d["rr"][:, None], beta=BETA)
    with pytest.raises(ValueError, match="beta"):
        preference_loss("dpo", d["c"], d["r"], d["rc"], d["rr"], beta=0.0)
    with pytest.raises(ValueError, match="'weights'"):
        preference_loss("dpo", d["c"], d["r"], d["rc"], d["rr"], beta=BETA, weights=torch.ones(3))
    with pytest.raises(ValueError, match="'chosen_lengths'"):
        bad = {"chosen_lengths": torch.zeros(B), "rejected_lengths": d["lr"]}
        preference_loss("simpo", d["c"], d["r"], None, None, beta=BETA, **bad)
