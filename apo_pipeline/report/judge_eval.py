"""`apo-pipeline judge-eval`: how well a judge judges, from a run's stored judgements or by running
an LLM judge on a file of labelled pairs.

Each pair (prompt, a, b) has the judge's verdict in both orders: p_ab = P(a beats b) with a shown
first, p_ba = P(b beats a) with b shown first (None: not asked or not scored), and optionally a
reference preference (+1: a is better, -1: b is better, 0: equal), from the file's labels or from
a reference reward r(prompt, response) (sign of r(a) - r(b)). The report:

- `scored`: scored orders / asked orders; `both_scored`: pairs scored in both orders / pairs.
- `order_agreement`: among pairs scored in both orders, the fraction whose two orders prefer the
  same response (p_ab > 1/2 and p_ba < 1/2, or p_ab < 1/2 and p_ba > 1/2; an exact 1/2 agrees with
  nothing).
- `position_bias`: mean over scored orders of P(first shown wins) - 1/2 (0: none, > 0: favours the
  first shown); `first_wins`: the fraction of scored orders the first shown wins.
- `reference_agreement`: among pairs with a strict reference preference and a judge decision
  (p = mean(p_ab, 1 - p_ba) over the scored orders, p != 1/2), the fraction on the reference's side;
  `reference_pairs` counts them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from apo_pipeline.report.samples import run_config
from apo_pipeline.storage import RunDir, read_judgements, read_rollouts
from apo_pipeline.task.reward_judge import REFERENCE_REWARDS, load_reward_fn

RewardFn = Callable[[Any, str], float]


@dataclass
class JudgedPair:
    """One pair with the judge's verdict in each order and an optional reference preference."""

    prompt: str
    a: str
    b: str
    p_ab: float | None = None
    p_ba: float | None = None
    reference: int | None = None


def _scored(p: float | None) -> bool:
    return p is not None and not math.isnan(p)


def combined(pair: JudgedPair) -> float | None:
    """P(a beats b) from the scored orders: mean(p_ab, 1 - p_ba); None if neither was scored."""
    values = [v for v in (pair.p_ab, None if not _scored(pair.p_ba) else 1.0 - pair.p_ba) if _scored(v)]
    return fmean(values) if values else None


def judge_report(pairs: Sequence[JudgedPair]) -> dict[str, Any]:
    """The report's figures (module docstring); fractions are None where nothing was there to count.
    An order is asked when its verdict is not None, and scored when it is also not NaN."""
    asked = [p for pair in pairs for p in (pair.p_ab, pair.p_ba) if p is not None]
    scored = [p for p in asked if not math.isnan(p)]
    both = [pair for pair in pairs if _scored(pair.p_ab) and _scored(pair.p_ba)]
    agree = [(pair.p_ab - 0.5) * (pair.p_ba - 0.5) < 0 for pair in both]
    decided = [(pair, c) for pair in pairs if pair.reference and (c := combined(pair)) is not None and c != 0.5]
    return {
        "pairs": len(pairs),
        "asked": len(asked),
        "scored": len(scored) / len(asked) if asked else None,
        "both_scored": len(both) / len(pairs) if pairs else None,
        "order_agreement": fmean(agree) if agree else None,
        "position_bias": fmean(scored) - 0.5 if scored else None,
        "first_wins": fmean(p > 0.5 for p in scored) if scored else None,
        "reference_pairs": len(decided),
        "reference_agreement": fmean((c > 0.5) == (pair.reference > 0) for pair, c in decided) if decided else None,
    }


def reference_sign(reward_fn: RewardFn, prompt: Any, a: str, b: str) -> int:
    """+1 if r(a) > r(b), -1 if r(a) < r(b), 0 if equal."""
    ra, rb = float(reward_fn(prompt, a)), float(reward_fn(prompt, b))
    return (ra > rb) - (ra < rb)


def run_reference(run_dir: str | Path) -> str | None:
    """The reference reward of a run's built-in prompt source (None for other sources)."""
    return REFERENCE_REWARDS.get(str(run_config(run_dir).get("data", {}).get("prompts")))


def pairs_from_run(run_dir: str | Path, reference: RewardFn | None = None) -> list[JudgedPair]:
    """Every judged comparison stored in a run's rounds (rollouts + judgements tables), with the
    texts it compared and, given `reference`, the reference preference. The second order counts as
    asked when the run's `judge.both_orders` was on (NaN verdicts: asked, not scored)."""
    run = RunDir(run_dir)
    both_orders = run_config(run.root).get("judge", {}).get("both_orders", True)
    pairs = []
    for rnd in run.rounds():
        if not {"rollouts", "judgements"} <= set(rnd.tables):
            continue
        rollouts = {r.prompt_index: r for r in read_rollouts(rnd.tables["rollouts"])}
        for j in read_judgements(rnd.tables["judgements"]):
            ro = rollouts.get(j.prompt_index)
            for c in j.comparisons if ro is not None else []:
                if math.isnan(c.p_ab) and math.isnan(c.p_ba) and not math.isnan(c.prob_a):
                    raise ValueError(f"{rnd.tables['judgements']}: no per-order verdicts stored (written by an older version)")
                a, b = ro.candidates[c.a].text, ro.candidates[c.b].text
                ref = reference_sign(reference, ro.judge_prompt, a, b) if reference else None
                pairs.append(JudgedPair(ro.judge_prompt, a, b, c.p_ab, c.p_ba if both_orders else None, ref))
    if not pairs:
        raise ValueError(f"{run_dir}: no stored judgements (is it a run directory with ranked rounds?)")
    return pairs


def read_pairs_file(path: str | Path) -> list[JudgedPair]:
    """JSONL rows {"prompt", "a", "b", optional "preferred": "a" | "b"}; ValueError naming file and line."""
    pairs = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {number}: invalid JSON ({err.msg})") from None
        missing = [k for k in ("prompt", "a", "b") if not isinstance(row.get(k) if isinstance(row, dict) else None, str)]
        if missing:
            raise ValueError(f"{path}: line {number}: needs string fields prompt, a, b (missing or not a string: {', '.join(missing)})")
        preferred = row.get("preferred")
        if preferred not in (None, "a", "b"):
            raise ValueError(f"{path}: line {number}: preferred must be \"a\" or \"b\", got {preferred!r}")
        pairs.append(JudgedPair(row["prompt"], row["a"], row["b"], reference=None if preferred is None else (1 if preferred == "a" else -1)))
    if not pairs:
        raise ValueError(f"{path}: no pairs")
    return pairs


def score_pairs(pairs: list[JudgedPair], compare_batch: Callable[[list[tuple[str, str, str]]], Sequence[float | None]]) -> None:
    """Ask `compare_batch` every pair in both orders (one call) and store p_ab, p_ba in place; an
    unscored order is recorded as NaN (asked, not scored)."""
    asked = [(p.prompt, p.a, p.b) for p in pairs] + [(p.prompt, p.b, p.a) for p in pairs]
    results = list(compare_batch(asked))
    n = len(pairs)
    for i, pair in enumerate(pairs):
        pair.p_ab = math.nan if results[i] is None else results[i]
        pair.p_ba = math.nan if results[n + i] is None else results[n + i]


def format_report(report: dict[str, Any], title: str, setup: dict[str, Any] | None = None) -> str:
    """The report as Markdown: a table of its figures (and the judge's start-up choices)."""
    lines = [f"# Judge report: {title}", "", "| figure | value |", "|---|---|"]
    for key, value in {**report, **(setup or {})}.items():
        lines.append(f"| {key} | {f'{value:.4g}' if isinstance(value, float) else value} |")
    return "\n".join(lines) + "\n"


def evaluate_run(run_dir: str | Path, reference: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The report of a run's stored judgements, with `reference` (a reward spec; default: the one
    of the run's built-in prompt source, if any). Returns (report, details: the reference used)."""
    spec = reference or run_reference(run_dir)
    pairs = pairs_from_run(run_dir, load_reward_fn(spec) if spec else None)
    return judge_report(pairs), {"reference": spec or "none"}


def evaluate_pairs_file(
    path: str | Path, overrides: Sequence[str] = (), config_file: str | Path | None = None, reference: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the LLM judge of a job config (`config_file`, then `key=value` overrides; judge.model must
    be set) in this process on a pairs file, both orders in one call. Unlabelled pairs take their
    reference from the `reference` reward spec when given. Returns (report, the judge's start-up
    choices and counts, each as judge_<name>)."""
    from apo_pipeline.config import load_config
    from apo_pipeline.config.schema import OnMCPOConfig
    from apo_pipeline.engine.vllm_env import apply_engine_env
    from apo_pipeline.task import resolve_model

    cfg = load_config(OnMCPOConfig, config_file, ["judge.backend=llm", *overrides])
    pairs = read_pairs_file(path)
    if reference:
        reward_fn = load_reward_fn(reference)
        for pair in pairs:
            if pair.reference is None:
                pair.reference = reference_sign(reward_fn, pair.prompt, pair.a, pair.b)
    model_dir = resolve_model(cfg.judge.model, seed=cfg.seed, key="judge.model")
    apply_engine_env()
    from apo_pipeline.engine.llm_judge import LLMJudgeBackend

    backend = LLMJudgeBackend(str(model_dir), cfg.judge, cfg.cluster, seed=cfg.seed)
    score_pairs(pairs, backend.compare_batch)
    return judge_report(pairs), {f"judge_{k}": v for k, v in backend.metrics().items()}
