"""Held-out evaluation: mean latent reward and win-rate against the starting policy.

At index 0 the starting policy's responses (sampled and greedy) become the baseline, saved as
`<run>/eval_baseline_{sampled,greedy}.parquet` so a resumed run compares against the same ones.
Win-rate = mean over prompts of the judge's P(current beats baseline), both orders averaged;
comparisons the judge could not score are left out and counted.
"""

from __future__ import annotations

from statistics import fmean
from typing import TYPE_CHECKING, Any

from apo_pipeline.config.sections import EvalConfig, GenerationConfig
from apo_pipeline.rollout import Rollout
from apo_pipeline.storage import read_rollouts, write_rollouts

if TYPE_CHECKING:
    from apo_pipeline.loops.pipeline import Pipeline

EVAL_SEED = 1_000_003


def both_order_probs(p_ab: list[float | None], p_ba: list[float | None]) -> list[float | None]:
    """Combine P(a>b) asked as (a, b) and as (b, a): mean(p_ab, 1 - p_ba); one missing order -> the other."""
    out: list[float | None] = []
    for x, y in zip(p_ab, p_ba, strict=True):
        vals = [v for v in (x, None if y is None else 1.0 - y) if v is not None]
        out.append(fmean(vals) if vals else None)
    return out


class Evaluator:
    """Evaluates the pool's current weights on the run's held-out prompts."""

    def __init__(self, pipe: "Pipeline", cfg: EvalConfig, max_tokens: int) -> None:
        self.pipe = pipe
        self.cfg = cfg
        self.gen = GenerationConfig(temperatures=[cfg.sampled_temperature], n_per_temperature=1, max_tokens=max_tokens)
        self.baseline: dict[str, dict[int, str]] = {}

    def _path(self, kind: str):
        return self.pipe.run.root / f"eval_baseline_{kind}.parquet"

    def _responses(self) -> dict[str, list[Rollout]]:
        prompts = self.pipe.prompts.eval
        out = {"sampled": self.pipe.pool.sample(prompts, self.gen, seed=EVAL_SEED)}
        if self.cfg.greedy:
            out["greedy"] = self.pipe.pool.generate_greedy(prompts, self.gen.max_tokens)
        return out

    def _load_baseline(self, kind: str, rollouts: list[Rollout], index: int) -> dict[int, str]:
        path = self._path(kind)
        if index == 0:
            write_rollouts(path, rollouts)
        elif kind not in self.baseline:
            if not path.is_file():
                raise FileNotFoundError(f"{path}: the starting policy's evaluation is missing; cannot compute win-rates")
            rollouts = read_rollouts(path)
        else:
            return self.baseline[kind]
        self.baseline[kind] = {r.prompt_index: r.candidates[0].text for r in rollouts}
        return self.baseline[kind]

    def _win_rate(self, rollouts: list[Rollout], base: dict[int, str]) -> tuple[float | None, int]:
        pairs = [(r.prompt, r.candidates[0].text, base[r.prompt_index]) for r in rollouts if r.prompt_index in base]
        if not pairs:
            return None, 0
        asked = [(p, a, b) for p, a, b in pairs] + [(p, b, a) for p, a, b in pairs]
        probs = self.pipe.judge.compare_batch(asked)
        combined = both_order_probs(list(probs[: len(pairs)]), list(probs[len(pairs):]))
        scored = [p for p in combined if p is not None]
        return (fmean(scored) if scored else None), len(combined) - len(scored)

    def run(self, index: int) -> dict[str, Any]:
        """Evaluate and log one `eval` event; returns its fields."""
        fields: dict[str, Any] = {"iteration": index}
        if self.pipe.unit == "segment":
            fields["segment"] = index
        for kind, rollouts in self._responses().items():
            suffix = "" if kind == "sampled" else "_greedy"
            base = self._load_baseline(kind, rollouts, index)
            if self.pipe.reward_fn is not None:
                fields[f"reward{suffix or '_mean'}"] = fmean(self.pipe.reward_fn(r.prompt, r.candidates[0].text) for r in rollouts)
            win, unscored = self._win_rate(rollouts, base)
            fields[f"win_rate{suffix}"] = win
            if unscored:
                fields[f"win_rate{suffix}_unscored"] = unscored
        self.pipe.log.log("eval", **fields)
        return fields
