"""Paired comparisons over seeds for bench/experiments.py (pure Python, no scipy).

Two variants run with the same seeds share the seed's tiny model, prompts and random streams, so
the per-seed difference d_s = a_s - b_s removes most of the seed-to-seed spread. We report the
mean difference and its two-sided 95% Student t interval over the seeds present in both:
mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n). The interval is "resolved" when it excludes 0.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

CONFIDENCE = 0.95


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), x in [0, 1]."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with `df` >= 1 degrees of freedom (bisection on `t_cdf`)."""
    if not 0.0 < p < 1.0 or df < 1:
        raise ValueError(f"t_quantile: need 0 < p < 1 and df >= 1, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return 0.5 * (low + high)


def paired_difference(a: Mapping[Any, float], b: Mapping[Any, float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean of a[s] - b[s] over the seeds s in both, its t interval, n and the seeds used.

    `low` / `high` are None below 2 seeds (no spread to estimate); `resolved` is whether the
    interval excludes 0 (None without an interval)."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    n = len(diffs)
    out: dict[str, Any] = {"n": n, "seeds": seeds, "mean": statistics.fmean(diffs) if n else None,
                           "sd": None, "low": None, "high": None, "resolved": None}
    if n >= 2:
        sd = statistics.stdev(diffs)
        half = t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n)
        out.update(sd=sd, low=out["mean"] - half, high=out["mean"] + half)
        out["resolved"] = out["low"] > 0 or out["high"] < 0
    return out
