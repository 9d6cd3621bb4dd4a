"""Iterative DPO vs APO on a tabular softmax bandit with exact Bradley-Terry preferences.

Contexts x responses table of logits theta; pi = softmax(theta). Each iteration minimises the
population DPO loss over all ordered pairs (y, y'), weighted by the sampling policy pi_t(y) pi_t(y')
times the BT probability sigma(r*(y) - r*(y')) that y is preferred, with reference pi_t. The
minimiser is log pi_{t+1} = log pi_t + r*/beta (+ const per context), so iterative DPO gives
log pi_T = log pi_0 + T r*/beta and APO (seed 000) gives c_T r*/beta with c_T = d_1 + ... + d_T,
d_1 = 1 + alpha, d_{k+1} = 1 + alpha d_k. The test runs the real `preference_loss("dpo")` and
`momentum.extrapolate_` and checks both coefficients and APO's faster decrease of the gap.
"""

import itertools

import numpy as np
import pytest
import torch

from apo_pipeline.losses import preference_loss
from apo_pipeline.momentum import extrapolate_

X, Y, BETA, ALPHA = 3, 4, 1.0, 0.3
PAIRS = [(y, z) for y, z in itertools.product(range(Y), repeat=2) if y != z]
YW = torch.tensor([p[0] for p in PAIRS])
YL = torch.tensor([p[1] for p in PAIRS])


@pytest.fixture(scope="module")
def bandit():
    g = torch.Generator().manual_seed(0)
    r_star = torch.rand(X, Y, generator=g, dtype=torch.float64) * 2 - 1
    theta0 = torch.randn(X, Y, generator=g, dtype=torch.float64) * 0.5
    return r_star, theta0


def population_loss(theta, ref_theta, r_star):
    """Population DPO loss of policy logits `theta` against reference / sampler `ref_theta`."""
    logp, ref_logp = torch.log_softmax(theta, -1), torch.log_softmax(ref_theta, -1)
    sampler = ref_logp.exp()
    weights = sampler[:, YW] * sampler[:, YL] * torch.sigmoid(r_star[:, YW] - r_star[:, YL])
    return preference_loss(
        "dpo",
        logp[:, YW].reshape(-1),
        logp[:, YL].reshape(-1),
        ref_logp[:, YW].reshape(-1),
        ref_logp[:, YL].reshape(-1),
        beta=BETA,
        weights=(weights / weights.mean()).reshape(-1),
    ).loss


def solve(ref_theta, r_star):
    """argmin of the population loss, from the reference, by L-BFGS in float64."""
    theta = ref_theta.clone().requires_grad_()
    opt = torch.optim.LBFGS(
        [theta], lr=1.0, max_iter=500, tolerance_grad=1e-13, tolerance_change=1e-16, history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = population_loss(theta, ref_theta, r_star)
        loss.backward()
        return loss

    opt.step(closure)
    closure()
    assert theta.grad.abs().max() < 1e-9, "inner problem not converged"
    return theta.detach()


def iterate(theta0, r_star, iterations, alpha):
    """theta_{t+1} = thetahat_{t+1} + alpha (thetahat_{t+1} - thetahat_t); thetahat_1 = theta_1."""
    theta, hat_prev = theta0.clone(), theta0.clone()
    for _ in range(iterations):
        hat = solve(theta, r_star)
        state = {"logits": hat.clone()}
        extrapolate_(state, {"logits": hat_prev}, alpha)
        theta, hat_prev = state["logits"], hat
    return theta


def fitted_coefficient(theta, theta0, r_star):
    """Least-squares k in (log pi_T - log pi_0) = k r* + const per context (both centred)."""
    delta = torch.log_softmax(theta, -1) - torch.log_softmax(theta0, -1)
    delta = delta - delta.mean(-1, keepdim=True)
    r = r_star - r_star.mean(-1, keepdim=True)
    return float((delta * r).sum() / (r * r).sum())


def gap(theta, r_star):
    """E_x [max_y r*(x, y) - E_{pi_T} r*(x, .)], contexts uniform."""
    return float((r_star.max(-1).values - (torch.softmax(theta, -1) * r_star).sum(-1)).mean())


def apo_coefficient(iterations, alpha):
    d, c = 1.0 + alpha, 0.0
    for _ in range(iterations):
        c, d = c + d, 1.0 + alpha * d
    return c


def test_apo_coefficient_recurrence():
    assert apo_coefficient(1, ALPHA) == pytest.approx(1.3)
    assert apo_coefficient(3, ALPHA) == pytest.approx(4.107)
    assert apo_coefficient(4, 0.0) == 4.0


def test_iterative_dpo_and_apo_on_the_bandit(bandit):
    r_star, theta0 = bandit
    dpo4 = iterate(theta0, r_star, 4, alpha=0.0)
    apo3 = iterate(theta0, r_star, 3, alpha=ALPHA)
    assert BETA * fitted_coefficient(dpo4, theta0, r_star) == pytest.approx(4.0, abs=1e-3)
    assert BETA * fitted_coefficient(apo3, theta0, r_star) == pytest.approx(apo_coefficient(3, ALPHA), abs=1e-3)
    # the fit is exact: the residual of log pi_T - log pi_0 - c r*/beta is a constant per context
    delta = torch.log_softmax(apo3, -1) - torch.log_softmax(theta0, -1) - apo_coefficient(3, ALPHA) * r_star / BETA
    assert float((delta - delta.mean(-1, keepdim=True)).abs().max()) < 1e-5
    assert gap(apo3, r_star) < gap(dpo4, r_star) < gap(theta0, r_star)
