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

from collections.abc import Callable
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any

from apo_pipeline.config.sections import EvalConfig, GenerationConfig
from apo_pipeline.monitoring import MetricsLogger
from apo_pipeline.rollout import Rollout
from apo_pipeline.seeds import derive_seed
from apo_pipeline.storage import RunDir, read_rollouts, write_rollouts

if TYPE_CHECKING:
    from apo_pipeline.engine.judge_pool import JudgePool
    from apo_pipeline.engine.learner_group import LearnerGroup
    from apo_pipeline.engine.pool import GenerationPool

TARGETS_FILE = "eval_targets.parquet"


def both_order_probs(p_ab: list[float | None], p_ba: list[float | None]) -> list[float | None]:
    """Combine P(a>b) asked as (a, b) and as (b, a): mean(p_ab, 1 - p_ba); one missing order -> the other."""
    out: list[float | None] = []
    for x, y in zip(p_ab, p_ba, strict=True):
        vals = [v for v in (x, None if y is None else 1.0 - y) if v is not None]
        out.append(fmean(vals) if vals else None)
    return out


class Evaluator:
    """Evaluates `pool`'s current weights on the held-out `prompts` of a run stored in `run_dir`
    (rounds counted in `unit`): `judge` compares against the baseline, `reward_fn` (reward judges)
    scores, `learner` receives D' of the dynamics probe when `dynamics`; one `eval` event to `metrics`."""

    def __init__(self, cfg: EvalConfig, max_tokens: int, *, pool: "GenerationPool", judge: "JudgePool",
                 learner: "LearnerGroup", reward_fn: Callable[[Any, str], float] | None, run_dir: RunDir, unit: str,
                 prompts: list[Any], seed: int, dynamics: bool, metrics: MetricsLogger) -> None:
        self.cfg = cfg
        self.gen = GenerationConfig(temperatures=[cfg.sampled_temperature], n_per_temperature=1, max_tokens=max_tokens)
        self.pool, self.judge, self.learner, self.reward_fn = pool, judge, learner, reward_fn
        self.run_dir, self.unit, self.prompts, self.seed = run_dir, unit, prompts, seed
        self.dynamics, self.metrics = dynamics, metrics
        self.baseline: dict[str, dict[int, str]] = {}

    def _path(self, kind: str) -> Path:
        return self.run_dir.root / f"eval_baseline_{kind}.parquet"

    def _targets_path(self, index: int) -> Path:
        return self.run_dir.round_dir(index, self.unit) / TARGETS_FILE

    def _set_targets(self, rollouts: list[Rollout]) -> None:
        self.learner.set_dynamics_targets([(r.prompt_ids, r.candidates[0].token_ids) for r in rollouts])

    def restore_targets(self, done: int) -> None:
        """After a resume at `done` rounds: D' of the newest evaluation at or before round `done`."""
        if not self.dynamics:
            return
        stored = [i for i in range(done, -1, -1) if self._targets_path(i).is_file()]
        if stored:
            self._set_targets(read_rollouts(self._targets_path(stored[0])))

    def _responses(self) -> dict[str, list[Rollout]]:
        out = {"sampled": self.pool.sample(self.prompts, self.gen, seed=derive_seed(self.seed, "eval"))}
        if self.cfg.greedy:
            out["greedy"] = self.pool.generate_greedy(self.prompts, self.gen.max_tokens)
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
        probs = self.judge.compare_batch(asked)
        combined = both_order_probs(list(probs[: len(pairs)]), list(probs[len(pairs):]))
        scored = [p for p in combined if p is not None]
        return (fmean(scored) if scored else None), len(combined) - len(scored)

    def run(self, index: int, policy: str | None = None) -> dict[str, Any]:
        """Evaluate and log one `eval` event (with a `policy` field naming the weights evaluated, when
        given); returns its fields. Sets D' of the dynamics probe from these responses."""
        fields: dict[str, Any] = {"iteration": index}
        if self.unit == "segment":
            fields["segment"] = index
        if policy is not None:
            fields["policy"] = policy
        responses = self._responses()
        if self.dynamics:
            targets = responses.get("greedy", responses["sampled"])
            write_rollouts(self._targets_path(index), targets)
            self._set_targets(targets)
        for kind, rollouts in responses.items():
            suffix = "" if kind == "sampled" else "_greedy"
            base = self._load_baseline(kind, rollouts, index)
            write_rollouts(self.run_dir.root / "eval" / f"{kind}_{index}.parquet", rollouts)
            if self.reward_fn is not None:
                fields[f"reward{suffix or '_mean'}"] = fmean(self.reward_fn(r.judge_prompt, r.candidates[0].text) for r in rollouts)
            win, unscored = self._win_rate(rollouts, base)
            fields[f"win_rate{suffix}"] = win
            if unscored:
                fields[f"win_rate{suffix}_unscored"] = unscored
        self.metrics.log("eval", **fields)
        return fields
