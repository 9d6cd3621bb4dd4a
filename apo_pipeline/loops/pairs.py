"""Turn rollouts plus the judge's verdicts into `TrainGroup`s for the learner (pure Python).

- OnMC-PO / MC-PO: every candidate stays in the group; the MC kernel picks negatives at train time.
- Iterative DPO / IPO (APO): the winner against one uniformly drawn other candidate.
- SPPO: argmax vs argmin of the SPPO scores, with their estimated win probabilities.
And the judge's verdicts as storage records (`judgements_from_rankings` / `_from_win_rates`).
Prompts whose ranking failed are dropped and counted, never given a default winner.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from apo_pipeline.ranking import PromptRanking, WinRates
from apo_pipeline.rollout import Rollout, TrainGroup
from apo_pipeline.storage import Comparison, Judgement


@dataclass
class Built:
    """The groups built and how many prompts were dropped (ranking failed)."""

    groups: list[TrainGroup]
    source_index: list[int]
    dropped: int


@dataclass
class Judged:
    """The judge's verdicts on some rollouts: the groups built from them and the storage records."""

    built: Built
    judgements: list[Judgement]


def _ids(rollout: Rollout) -> list[list[int]]:
    return [c.token_ids for c in rollout.candidates]


def candidate_groups(rollouts: list[Rollout], rankings: list[PromptRanking]) -> Built:
    """One group per prompt with all K candidates and the judge's winner as `preferred`."""
    groups, index = [], []
    for n, (ro, rk) in enumerate(zip(rollouts, rankings, strict=True)):
        if rk.winner is not None:
            groups.append(TrainGroup(ro.prompt_ids, _ids(ro), rk.winner))
            index.append(n)
    return Built(groups, index, len(rollouts) - len(groups))


def winner_vs_random(rollouts: list[Rollout], rankings: list[PromptRanking], seed: int) -> Built:
    """Pairs (winner, one other candidate drawn uniformly with a seeded RNG)."""
    rng = random.Random(seed)
    groups, index = [], []
    for n, (ro, rk) in enumerate(zip(rollouts, rankings, strict=True)):
        if rk.winner is None:
            continue
        others = [k for k in range(len(ro.candidates)) if k != rk.winner]
        loser = rng.choice(others)
        groups.append(TrainGroup(ro.prompt_ids, [ro.candidates[rk.winner].token_ids, ro.candidates[loser].token_ids], 0))
        index.append(n)
    return Built(groups, index, len(rollouts) - len(groups))


def sppo_pairs(rollouts: list[Rollout], win_rates: list[WinRates]) -> Built:
    """Pairs (argmax score, argmin score) with SPPO's win-probability estimates."""
    groups, index = [], []
    for n, (ro, wr) in enumerate(zip(rollouts, win_rates, strict=True)):
        if wr.chosen is None or wr.rejected is None or wr.win_prob is None or wr.chosen == wr.rejected:
            continue
        ids = [ro.candidates[wr.chosen].token_ids, ro.candidates[wr.rejected].token_ids]
        probs = [float(wr.win_prob[wr.chosen]), float(wr.win_prob[wr.rejected])]
        groups.append(TrainGroup(ro.prompt_ids, ids, 0, win_probs=probs))
        index.append(n)
    return Built(groups, index, len(rollouts) - len(groups))


def with_engine_logps(built: Built, rollouts: list[Rollout]) -> list[TrainGroup]:
    """`built.groups` with `ref_logps` = the log-probs the engines returned while sampling each
    candidate (`Candidate.logprob`; the raw log pi of the engines' weights under
    `algorithm.reference_from_engines`). A group's candidate is found in its rollout by token ids."""
    for group, n in zip(built.groups, built.source_index, strict=True):
        logps = {tuple(c.token_ids): c.logprob for c in rollouts[n].candidates}
        group.ref_logps = [logps[tuple(ids)] for ids in group.candidate_ids]
    return built.groups


def judgements_from_rankings(rollouts: list[Rollout], rankings: list[PromptRanking]) -> list[Judgement]:
    """Storage records of the ranking log (failed comparisons as NaN, failed prompts winner None)."""
    out = []
    for ro, rk in zip(rollouts, rankings, strict=True):
        comps = [Comparison(c.a, c.b, _nan(c.p), _nan(c.p_ab), _nan(c.p_ba)) for c in rk.comparisons]
        failures = [f"round {c.round}: {c.a} vs {c.b} not scored" for c in rk.comparisons if c.p is None]
        out.append(Judgement(ro.prompt_index, rk.winner, comps, None, failures))
    return out


def judgements_from_win_rates(rollouts: list[Rollout], rates: list[WinRates]) -> list[Judgement]:
    """Storage records of SPPO's win-rate matrices (winner = argmax score, None if it failed)."""
    out = []
    for ro, wr in zip(rollouts, rates, strict=True):
        matrix = [[float(x) for x in row] for row in wr.win]
        failures = [f"{wr.failures} pair(s) not scored"] if wr.failures else []
        out.append(Judgement(ro.prompt_index, wr.chosen, [], matrix, failures))
    return out


def _nan(p: float | None) -> float:
    return float("nan") if p is None else p
