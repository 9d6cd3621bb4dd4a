"""Held-out evaluation: mean latent reward and win-rate against the starting policy.

At index 0 the starting policy's responses (sampled and greedy) become the baseline, saved as
`<run>/eval_baseline_{sampled,greedy}.parquet` so a resumed run compares against the same ones.
Every evaluation's responses are also kept as `<run>/eval/{sampled,greedy}_<index>.parquet`
(the report's sample responses).
Win-rate = mean over prompts of the judge's P(current beats baseline), both orders averaged;
comparisons the judge could not score are left out and counted.

With `algorithm.dynamics_every`, each evaluation's greedy responses (sampled ones without
`eval.greedy`) become D', the target set of the learner's dynamics probe, and are stored as
`<round dir>/eval_targets.parquet` so a resumed run measures G against the same D'.
"""

from __future__ import annotations

from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any

from apo_pipeline.config.sections import EvalConfig, GenerationConfig
from apo_pipeline.rollout import Rollout
from apo_pipeline.seeds import derive_seed
from apo_pipeline.storage import read_rollouts, write_rollouts

if TYPE_CHECKING:
    from apo_pipeline.loops.pipeline import Pipeline

TARGETS_FILE = "eval_targets.parquet"


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

    def _path(self, kind: str) -> Path:
        return self.pipe.run_dir.root / f"eval_baseline_{kind}.parquet"

    def _targets_path(self, index: int) -> Path:
        return self.pipe.run_dir.round_dir(index, self.pipe.unit) / TARGETS_FILE

    def _set_targets(self, rollouts: list[Rollout]) -> None:
        self.pipe.learner.set_dynamics_targets([(r.prompt_ids, r.candidates[0].token_ids) for r in rollouts])

    def restore_targets(self, done: int) -> None:
        """After a resume at `done` rounds: D' of the newest evaluation at or before round `done`."""
        if not self.pipe.cfg.algorithm.dynamics_every:
            return
        stored = [i for i in range(done, -1, -1) if self._targets_path(i).is_file()]
        if stored:
            self._set_targets(read_rollouts(self._targets_path(stored[0])))

    def _responses(self) -> dict[str, list[Rollout]]:
        prompts = self.pipe.prompts.eval
        out = {"sampled": self.pipe.pool.sample(prompts, self.gen, seed=derive_seed(self.pipe.cfg.seed, "eval"))}
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
        pairs = [(r.judge_prompt, r.candidates[0].text, base[r.prompt_index]) for r in rollouts if r.prompt_index in base]
        if not pairs:
            return None, 0
        asked = [(p, a, b) for p, a, b in pairs] + [(p, b, a) for p, a, b in pairs]
        probs = self.pipe.judge.compare_batch(asked)
        combined = both_order_probs(list(probs[: len(pairs)]), list(probs[len(pairs):]))
        scored = [p for p in combined if p is not None]
        return (fmean(scored) if scored else None), len(combined) - len(scored)

    def run(self, index: int, policy: str | None = None) -> dict[str, Any]:
        """Evaluate and log one `eval` event (with a `policy` field naming the weights evaluated, when
        given); returns its fields. Sets D' of the dynamics probe from these responses."""
        fields: dict[str, Any] = {"iteration": index}
        if self.pipe.unit == "segment":
            fields["segment"] = index
        if policy is not None:
            fields["policy"] = policy
        responses = self._responses()
        if self.pipe.cfg.algorithm.dynamics_every:
            targets = responses.get("greedy", responses["sampled"])
            write_rollouts(self._targets_path(index), targets)
            self._set_targets(targets)
        for kind, rollouts in responses.items():
            suffix = "" if kind == "sampled" else "_greedy"
            base = self._load_baseline(kind, rollouts, index)
            write_rollouts(self.pipe.run_dir.root / "eval" / f"{kind}_{index}.parquet", rollouts)
            if self.pipe.reward_fn is not None:
                fields[f"reward{suffix or '_mean'}"] = fmean(self.pipe.reward_fn(r.judge_prompt, r.candidates[0].text) for r in rollouts)
            win, unscored = self._win_rate(rollouts, base)
            fields[f"win_rate{suffix}"] = win
            if unscored:
                fields[f"win_rate{suffix}_unscored"] = unscored
        self.pipe.metrics.log("eval", **fields)
        return fields
