"""Judge-side ranking: iterative pairwise ranking (Chen et al. 2024b, as used by MC-PO App. B.1)
and full pairwise win-rate matrices with SPPO's scores (uclaml/SPPO + llm-blender).

The judge is abstract: `compare_batch(list of (prompt, a, b)) -> list of P(a beats b) or None`
(None: that comparison could not be scored). Every ranking round over all prompts is one
`compare_batch` call, and a win-rate matrix for all prompts is one call.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from apo_pipeline.task.synthetic import stable_int

CompareBatch = Callable[[list[tuple[str, str, str]]], Sequence[float | None]]


@dataclass
class Comparison:
    """One round of one prompt: incumbent `a` vs challenger `b` (candidate indices).
    p_ab: judge's P(a beats b) with a shown first; p_ba: P(b beats a) with b shown first (None
    when not asked or not scored); p: the combined P(a beats b); tie: p was exactly 1/2."""

    round: int
    a: int
    b: int
    p_ab: float | None
    p_ba: float | None
    p: float | None
    winner: int | None
    tie: bool = False


@dataclass
class PromptRanking:
    """winner: index of the best candidate, or None if a comparison failed in every order asked.
    counts: comparisons (rounds played), asked (judge queries), judge_calls, failures,
    partial_failures (one of two orders failed), ties."""

    winner: int | None
    comparisons: list[Comparison] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class RankingResult:
    """Per-prompt results, the number of `compare_batch` calls made, and counts summed over prompts."""

    prompts: list[PromptRanking]
    judge_calls: int
    totals: dict[str, int]


def iterative_ranking(
    prompts: Sequence[str],
    candidates: Sequence[Sequence[str]],
    compare_batch: CompareBatch,
    *,
    both_orders: bool = True,
    seed: int = 0,
) -> RankingResult:
    """K-1 rounds per prompt: 1 vs 2, winner vs 3, ... (round r compares the incumbent with
    candidate r). With `both_orders` each comparison is asked as (a, b) and (b, a) and
    P(a > b) = mean(P(a, b), 1 - P(b, a)) over the orders that were scored. Exact ties are broken
    by a coin of the prompt's own (`tie_coin`: seeded by `seed`, the prompt and its candidates),
    so a prompt ranks the same in any batch and at any position (any judge-pool sharding). A
    prompt whose comparison failed in every order gets winner None and is asked nothing further."""
    _check_inputs(prompts, candidates)
    coins = [tie_coin(seed, p, c) for p, c in zip(prompts, candidates)]
    states = [PromptRanking(winner=0, counts=_zero_counts()) for _ in prompts]
    judge_calls = 0
    for r in range(1, max((len(c) for c in candidates), default=1)):
        active = [i for i, s in enumerate(states) if s.winner is not None and r < len(candidates[i])]
        requests = []
        for i in active:
            a, b = states[i].winner, r
            requests.append((prompts[i], candidates[i][a], candidates[i][b]))
            if both_orders:
                requests.append((prompts[i], candidates[i][b], candidates[i][a]))
        if not active:
            continue
        results = _ask(compare_batch, requests)
        judge_calls += 1
        per_prompt = 2 if both_orders else 1
        for n, i in enumerate(active):
            p_ab = results[per_prompt * n]
            p_ba = results[per_prompt * n + 1] if both_orders else None
            _play(states[i], r, p_ab, p_ba, both_orders, coins[i])
    for state in states:
        state.counts["judge_calls"] = state.counts["comparisons"]
    totals = {key: sum(s.counts[key] for s in states) for key in _zero_counts()}
    totals["judge_calls"] = judge_calls
    return RankingResult(prompts=states, judge_calls=judge_calls, totals=totals)


def tie_coin(seed: int, prompt: Any, candidates: Sequence[str]) -> random.Random:
    """The tie-breaking coin of one prompt: depends only on `seed`, the prompt and its candidates."""
    return random.Random(stable_int("tie", seed, prompt, tuple(candidates)))


def _play(
    state: PromptRanking, r: int, p_ab: float | None, p_ba: float | None, both: bool, coin: random.Random
) -> None:
    """Record round r of one prompt and move its incumbent to the round's winner (None: failed)."""
    a, b = state.winner, r
    scored = [p for p in (p_ab, None if p_ba is None else 1.0 - p_ba) if p is not None]
    state.counts["comparisons"] += 1
    state.counts["asked"] += 2 if both else 1
    if not scored:
        state.counts["failures"] += 1
        state.comparisons.append(Comparison(r, a, b, p_ab, p_ba, None, None))
        state.winner = None
        return
    if both and len(scored) == 1:
        state.counts["partial_failures"] += 1
    p = sum(scored) / len(scored)
    tie = p == 0.5
    if tie:
        state.counts["ties"] += 1
        winner = a if coin.random() < 0.5 else b
    else:
        winner = a if p > 0.5 else b
    state.comparisons.append(Comparison(r, a, b, p_ab, p_ba, p, winner, tie))
    state.winner = winner


@dataclass
class WinRates:
    """One prompt's K x K matrices (numpy, NaN = not scored).

    raw[i, j]: judge's P(i beats j) with i shown first (diagonal 1/2). win[i, j]: both-order
    estimate mean(raw[i, j], 1 - raw[j, i]). SPPO (uclaml/SPPO with llm-blender's scores):
    logits C = logit(raw) (clipped to [eps, 1-eps]; a missing order is filled as C_ij = -C_ji),
    scores s_i = mean_j (C_ij - C_ji), sppo_probs[i, j] = sigma(s_i - s_j), win_prob[i] =
    mean_j sppo_probs[i, j] (self term 1/2 included), chosen / rejected = argmax / argmin s.
    These are None when some pair failed in both orders."""

    raw: np.ndarray
    win: np.ndarray
    scores: np.ndarray | None
    sppo_probs: np.ndarray | None
    win_prob: np.ndarray | None
    chosen: int | None
    rejected: int | None
    failures: int
    partial_failures: int


def win_rate_matrix(
    prompts: Sequence[str],
    candidates: Sequence[Sequence[str]],
    compare_batch: CompareBatch,
    *,
    eps: float = 1e-6,
) -> list[WinRates]:
    """Full pairwise matrices for every prompt in one `compare_batch` call (K (K-1) ordered
    comparisons per prompt), plus SPPO's scores and win-probability estimates."""
    _check_inputs(prompts, candidates)
    requests, slots = [], []
    for n, (prompt, cands) in enumerate(zip(prompts, candidates)):
        for i in range(len(cands)):
            for j in range(len(cands)):
                if i != j:
                    requests.append((prompt, cands[i], cands[j]))
                    slots.append((n, i, j))
    results = _ask(compare_batch, requests) if requests else []
    raws = [np.full((len(c), len(c)), np.nan) for c in candidates]
    for raw in raws:
        np.fill_diagonal(raw, 0.5)
    for (n, i, j), p in zip(slots, results):
        if p is not None:
            raws[n][i, j] = p
    return [_win_rates(raw, eps) for raw in raws]


def _win_rates(raw: np.ndarray, eps: float) -> WinRates:
    flipped = 1.0 - raw.T
    win = np.where(np.isnan(raw), flipped, np.where(np.isnan(flipped), raw, (raw + flipped) / 2))
    off_diagonal = ~np.eye(len(raw), dtype=bool)
    failures = int(np.isnan(win)[off_diagonal].sum()) // 2
    partial = int((np.isnan(raw) ^ np.isnan(raw.T))[off_diagonal].sum()) // 2
    if failures:
        return WinRates(raw, win, None, None, None, None, None, failures, partial)
    logits = _logit(np.clip(raw, eps, 1.0 - eps))
    logits = np.where(np.isnan(logits), -logits.T, logits)
    scores = (logits - logits.T).mean(axis=1)
    probs = 1.0 / (1.0 + np.exp(scores[None, :] - scores[:, None]))
    return WinRates(
        raw, win, scores, probs, probs.mean(axis=1), int(scores.argmax()), int(scores.argmin()), 0, partial
    )


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _ask(compare_batch: CompareBatch, requests: list[tuple[str, str, str]]) -> list[float | None]:
    """One judge call; NaN counts as not scored, anything outside [0, 1] is an error."""
    results = list(compare_batch(requests))
    if len(results) != len(requests):
        raise ValueError(f"judge returned {len(results)} results for {len(requests)} comparisons")
    clean: list[float | None] = []
    for n, p in enumerate(results):
        if p is None or (isinstance(p, float) and math.isnan(p)):
            clean.append(None)
            continue
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"judge result {n} (prompt {requests[n][0][:40]!r}) is {p!r}, not a probability in [0, 1]")
        clean.append(float(p))
    return clean


def _check_inputs(prompts: Sequence[str], candidates: Sequence[Sequence[str]]) -> None:
    if len(prompts) != len(candidates):
        raise ValueError(f"{len(prompts)} prompts but {len(candidates)} candidate lists")
    for n, cands in enumerate(candidates):
        if len(cands) == 0:
            raise ValueError(f"prompt {n} has no candidates")


def _zero_counts() -> dict[str, int]:
    return {"comparisons": 0, "asked": 0, "judge_calls": 0, "failures": 0, "partial_failures": 0, "ties": 0}
