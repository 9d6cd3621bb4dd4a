"""POS / NEG / TOT decomposition of the DPO gradient, G against D', loss shares, the cDPO schedule."""

import numpy as np
import pytest
import torch

from apo_pipeline.dynamics import cdpo_weights, dpo_gradient_decomposition, target_nll_gradient
from apo_pipeline.losses import preference_loss

BETA = 0.4
B, D = 7, 5


def linear_batch(seed=0):
    """log pi(y) = <x_y, w> + <x_y, v>: linear in the parameters, so grad log pi(y) = (x_y, x_y)."""
    g = torch.Generator().manual_seed(seed)
    xw, xl = torch.randn(B, D, generator=g, dtype=torch.float64), torch.randn(B, D, generator=g, dtype=torch.float64)
    w = torch.randn(D, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(D, generator=g, dtype=torch.float64, requires_grad=True)
    ref_c, ref_r = torch.randn(B, generator=g, dtype=torch.float64), torch.randn(B, generator=g, dtype=torch.float64)
    return (w, v), xw, xl, ref_c, ref_r


def logps(params, xw, xl):
    w, v = params
    return xw @ w + xw @ v, xl @ w + xl @ v


def test_components_against_closed_form():
    params, xw, xl, ref_c, ref_r = linear_batch()
    c, r = logps(params, xw, xl)
    m = dpo_gradient_decomposition(params, c, r, ref_c, ref_r, BETA)
    h = BETA * ((c - ref_c) - (r - ref_r)).detach().numpy()
    weight = 1 / (1 + np.exp(h))
    coef = BETA * weight / B
    # each parameter vector gets the same gradient, so the norm over (w, v) is sqrt(2) |g|
    pos = -(coef[:, None] * xw.numpy()).sum(0)
    neg = (coef[:, None] * xl.numpy()).sum(0)
    assert m["dyn/pos_norm"] == pytest.approx(np.sqrt(2) * np.linalg.norm(pos), rel=1e-10)
    assert m["dyn/neg_norm"] == pytest.approx(np.sqrt(2) * np.linalg.norm(neg), rel=1e-10)
    assert m["dyn/total_norm"] == pytest.approx(np.sqrt(2) * np.linalg.norm(pos + neg), rel=1e-10)
    assert m["dyn/weight_mean"] == pytest.approx(weight.mean())
    assert m["dyn/weight_min"] == pytest.approx(weight.min()) and m["dyn/weight_max"] == pytest.approx(weight.max())
    order = np.argsort(-weight)
    for label, members in zip(("top", "mid", "bot"), np.array_split(order, 3)):
        p = -(coef[members, None] * xw.numpy()[members]).sum(0)
        n = (coef[members, None] * xl.numpy()[members]).sum(0)
        assert m[f"dyn/{label}/pos_norm"] == pytest.approx(np.sqrt(2) * np.linalg.norm(p), rel=1e-10)
        assert m[f"dyn/{label}/neg_norm"] == pytest.approx(np.sqrt(2) * np.linalg.norm(n), rel=1e-10)
        assert m[f"dyn/{label}/total_norm"] == pytest.approx(np.sqrt(2) * np.linalg.norm(p + n), rel=1e-10)


def test_total_is_the_dpo_loss_gradient_and_graph_survives():
    params, xw, xl, ref_c, ref_r = linear_batch(seed=1)
    c, r = logps(params, xw, xl)
    m = dpo_gradient_decomposition(params, c, r, ref_c, ref_r, BETA, terciles=False)
    assert "dyn/top/pos_norm" not in m
    loss = preference_loss("dpo", c, r, ref_c, ref_r, beta=BETA).loss
    loss.backward()  # the graph through c, r is still there
    total = torch.sqrt(sum((p.grad**2).sum() for p in params))
    assert m["dyn/total_norm"] == pytest.approx(total.item(), rel=1e-10)


def test_unused_parameters_count_as_zero():
    params, xw, xl, ref_c, ref_r = linear_batch(seed=2)
    c, r = logps(params, xw, xl)
    extra = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    with_extra = dpo_gradient_decomposition([*params, extra], c, r, ref_c, ref_r, BETA)
    without = dpo_gradient_decomposition(params, c, r, ref_c, ref_r, BETA)
    assert with_extra == pytest.approx(without)


def target_features(seed=4, n=6):
    """D': n target responses with log pi(y) = <x_y, w> + <x_y, v> and their token counts."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g, dtype=torch.float64), [3, 1, 4, 1, 5, 9][:n]


def test_g_against_closed_form_and_components_add_up():
    params, xw, xl, ref_c, ref_r = linear_batch(seed=5)
    c, r = logps(params, xw, xl)
    xt, lengths = target_features()
    w, v = params
    target = target_nll_gradient(params, [xt[:4] @ w + xt[:4] @ v, xt[4:] @ w + xt[4:] @ v], sum(lengths))
    g_t = -xt.sum(0).numpy() / sum(lengths)  # grad of NLL(D') for w and for v alike
    assert all(np.allclose(t.numpy(), g_t) for t in target)
    m = dpo_gradient_decomposition(params, c, r, ref_c, ref_r, BETA, target_grad=target)
    weight = 1 / (1 + np.exp(BETA * ((c - ref_c) - (r - ref_r)).detach().numpy()))
    coef = BETA * weight / B
    pos = -(coef[:, None] * xw.numpy()).sum(0)
    neg = (coef[:, None] * xl.numpy()).sum(0)
    assert m["dyn/G_pos"] == pytest.approx(2 * pos @ g_t, rel=1e-10)  # both parameter vectors contribute
    assert m["dyn/G_neg"] == pytest.approx(2 * neg @ g_t, rel=1e-10)
    assert m["dyn/G_total"] == pytest.approx(m["dyn/G_pos"] + m["dyn/G_neg"], rel=1e-12)
    for part in ("pos", "neg", "total"):
        terciles = sum(m[f"dyn/{t}/G_{part}"] for t in ("top", "mid", "bot"))
        assert terciles == pytest.approx(m[f"dyn/G_{part}"], rel=1e-10)


def test_g_is_the_first_order_change_of_the_target_nll():
    """A small step -lr * grad L_dpo lowers NLL(D') by lr * G_total (first order)."""
    params, xw, xl, ref_c, ref_r = linear_batch(seed=6)
    xt, lengths = target_features()

    def nll(ps):
        return -(xt @ ps[0] + xt @ ps[1]).sum() / sum(lengths)

    c, r = logps(params, xw, xl)
    target = target_nll_gradient(params, [xt @ params[0] + xt @ params[1]], sum(lengths))
    m = dpo_gradient_decomposition(params, c, r, ref_c, ref_r, BETA, target_grad=target)
    grads = torch.autograd.grad(preference_loss("dpo", c, r, ref_c, ref_r, beta=BETA).loss, params)
    lr = 1e-6
    with torch.no_grad():
        drop = nll(params) - nll([p - lr * g for p, g in zip(params, grads)])
    assert float(drop) == pytest.approx(lr * m["dyn/G_total"], rel=1e-6)


def test_loss_shares_by_weight_tercile():
    params, xw, xl, ref_c, ref_r = linear_batch(seed=7)
    c, r = logps(params, xw, xl)
    m = dpo_gradient_decomposition(params, c, r, ref_c, ref_r, BETA)
    h = BETA * ((c - ref_c) - (r - ref_r)).detach().numpy()
    losses, weight = np.log1p(np.exp(-h)), 1 / (1 + np.exp(h))
    order = np.argsort(-weight)
    for label, members in zip(("top", "mid", "bot"), np.array_split(order, 3)):
        assert m[f"dyn/{label}/loss_share"] == pytest.approx(losses[members].sum() / losses.sum())
        assert m[f"dyn/{label}/weight_mean"] == pytest.approx(weight[members].mean())
    assert sum(m[f"dyn/{t}/loss_share"] for t in ("top", "mid", "bot")) == pytest.approx(1.0)
    assert m["dyn/top/loss_share"] >= m["dyn/mid/loss_share"] >= m["dyn/bot/loss_share"]  # larger weight, larger loss
    assert "dyn/G_total" not in m  # no target set: no G


def test_target_gradient_is_checked_and_chunking_does_not_matter():
    params, xw, xl, ref_c, ref_r = linear_batch(seed=8)
    xt, lengths = target_features()
    w, v = params
    whole = target_nll_gradient(params, [xt @ w + xt @ v], 23)
    chunks = target_nll_gradient(params, [xt[i : i + 1] @ w + xt[i : i + 1] @ v for i in range(len(xt))], 23)
    assert all(torch.allclose(a, b) for a, b in zip(whole, chunks))
    c, r = logps(params, xw, xl)
    with pytest.raises(ValueError, match="target_grad"):
        dpo_gradient_decomposition(params, c, r, ref_c, ref_r, BETA, target_grad=whole[:1])
    with pytest.raises(ValueError, match="num_tokens"):
        target_nll_gradient(params, [xt @ w], 0)


def test_cdpo_phases_shape():
    """No NEG before t1, plain DPO in [t1, t2), no POS from t2 (floor keeps a share)."""
    assert cdpo_weights(0, 100, 300, shape="phases") == (1.0, 0.0)
    assert cdpo_weights(99, 100, 300, shape="phases") == (1.0, 0.0)
    assert cdpo_weights(100, 100, 300, shape="phases") == (1.0, 1.0)
    assert cdpo_weights(299, 100, 300, shape="phases") == (1.0, 1.0)
    assert cdpo_weights(300, 100, 300, shape="phases") == (0.0, 1.0)
    assert cdpo_weights(0, 100, 300, floor=0.2, shape="phases") == (1.0, 0.2)
    assert cdpo_weights(500, 100, 300, floor=0.2, shape="phases") == (0.2, 1.0)
    for step in (0, 50, 300, 1000):  # the two shapes agree outside (t1, t2)
        assert cdpo_weights(step, 100, 300, shape="phases") == cdpo_weights(step, 100, 300)
    with pytest.raises(ValueError, match="shape"):
        cdpo_weights(0, 1, 2, shape="step")


def test_cdpo_schedule():
    assert cdpo_weights(0, 100, 300) == (1.0, 0.0)
    assert cdpo_weights(100, 100, 300) == (1.0, 0.0)
    assert cdpo_weights(200, 100, 300) == (0.5, 0.5)
    assert cdpo_weights(250, 100, 300) == (0.25, 0.75)
    assert cdpo_weights(300, 100, 300) == (0.0, 1.0)
    assert cdpo_weights(10_000, 100, 300) == (0.0, 1.0)
    assert cdpo_weights(0, 100, 300, floor=0.2) == (1.0, 0.2)
    assert cdpo_weights(400, 100, 300, floor=0.2) == (pytest.approx(0.2), 1.0)
    pos = [cdpo_weights(s, 100, 300)[0] for s in range(0, 400, 7)]
    assert pos == sorted(pos, reverse=True)
    with pytest.raises(ValueError, match="t1 < t2"):
        cdpo_weights(0, 300, 300)
    with pytest.raises(ValueError, match="floor"):
        cdpo_weights(0, 1, 2, floor=1.5)


def test_cdpo_weights_drive_the_loss():
    params, xw, xl, ref_c, ref_r = linear_batch(seed=3)
    c, r = logps(params, xw, xl)
    pos_w, neg_w = cdpo_weights(250, 100, 300)
    c_leaf, r_leaf = c.detach().requires_grad_(), r.detach().requires_grad_()
    out = preference_loss("dpo", c_leaf, r_leaf, ref_c, ref_r, beta=BETA, pos_weight=pos_w, neg_weight=neg_w)
    out.loss.backward()
    weight = torch.sigmoid(-BETA * ((c - ref_c) - (r - ref_r))).detach()
    torch.testing.assert_close(c_leaf.grad, -pos_w * BETA * weight / B)
    torch.testing.assert_close(r_leaf.grad, neg_w * BETA * weight / B)
