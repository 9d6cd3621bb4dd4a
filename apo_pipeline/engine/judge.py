"""The judge actor (`judge-<i>`): one interface over the `reward` and `llm` backends.

Both backends answer `compare_batch(list of (prompt, a, b)) -> list of P(a beats b) or None`.
`rank` (iterative pairwise ranking, K-1 rounds; each round for all prompts is one
`compare_batch`, both orders when `judge.both_orders`) and `win_matrix` (full pairwise matrices
with SPPO's scores, one `compare_batch`) are `apo_pipeline.ranking` run next to the backend, so
only prompts and texts cross the process boundary.
"""

from __future__ import annotations

from typing import Any

import ray

from apo_pipeline.config.sections import ClusterConfig, JudgeConfig
from apo_pipeline.ranking import RankingResult, WinRates, iterative_ranking, win_rate_matrix

Comparison = tuple[str, str, str]


@ray.remote
class Judge:
    """`reward`: Bradley-Terry over `judge.reward_fn` (the task's r* by default);
    `llm`: `LLMJudgeBackend` on `model_path` (default `judge.model`)."""

    def __init__(
        self,
        judge: JudgeConfig,
        cluster: ClusterConfig,
        *,
        model_path: str | None = None,
        top_logprobs: int = 20,
        chat: bool | None = None,
        seed: int = 0,
    ) -> None:
        self.both_orders = judge.both_orders
        self.seed = seed
        if judge.backend == "llm":
            from apo_pipeline.engine.vllm_env import apply_engine_env

            apply_engine_env()
            from apo_pipeline.engine.llm_judge import LLMJudgeBackend

            path = model_path or judge.model
            if path is None:
                raise ValueError("judge.model: the llm judge needs a model path")
            self.backend = LLMJudgeBackend(path, judge, cluster, top_logprobs=top_logprobs, chat=chat, seed=seed)
        else:
            from apo_pipeline.task.reward_judge import BradleyTerryRewardJudge, load_reward_fn

            reward_fn = load_reward_fn(judge.reward_fn)
            self.backend = BradleyTerryRewardJudge(reward_fn, scale=judge.bt_scale, mode=judge.mode, seed=seed)

    def compare_batch(self, items: list[Comparison]) -> list[float | None]:
        """P(a beats b) per comparison (None: not scored)."""
        return list(self.backend.compare_batch(items))

    def rank(self, prompts: list[str], candidate_texts: list[list[str]], seed: int | None = None) -> RankingResult:
        """Iterative pairwise ranking of each prompt's candidates; `seed` (default: the actor's)
        draws the coin that breaks exact ties."""
        return iterative_ranking(
            prompts,
            candidate_texts,
            self.backend.compare_batch,
            both_orders=self.both_orders,
            seed=self.seed if seed is None else seed,
        )

    def win_matrix(self, prompts: list[str], candidate_texts: list[list[str]]) -> list[WinRates]:
        """Every ordered pair of each prompt's candidates in one call; SPPO scores and win-probs."""
        return win_rate_matrix(prompts, candidate_texts, self.backend.compare_batch)

    def metrics(self) -> dict[str, Any]:
        """The backend's counters (the llm backend: asked, scored, retried, failed, calls, ...)."""
        metrics = getattr(self.backend, "metrics", None)
        return metrics() if callable(metrics) else {}
