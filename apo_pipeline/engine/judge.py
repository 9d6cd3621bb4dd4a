"""The judge actor (`judge-<i>`): one interface over the `reward` and `llm` backends.

Both backends are a `judge_backend.JudgeBackend`: `compare_batch(list of (prompt, a, b)) -> list of
P(a beats b) or None`, and `metrics()`.
`rank` (iterative pairwise ranking, K-1 rounds; each round for all prompts is one
`compare_batch`, both orders when `judge.both_orders`) and `win_matrix` (full pairwise matrices
with SPPO's scores, one `compare_batch`) are `apo_pipeline.ranking` run next to the backend, so
only prompts and texts cross the process boundary. `engine/judge_pool.py` shards prompts over
several of these actors.

Each actor counts what it judged and the seconds it was busy, and after every call reports them
as Ray metrics tagged `judge=<actor name>` (`JudgeMeter`): the dashboard shows every judge.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray

from apo_pipeline.config.sections import ClusterConfig, JudgeConfig
from apo_pipeline.judge_backend import Comparison, JudgeBackend
from apo_pipeline.ranking import RankingResult, WinRates, iterative_ranking, win_rate_matrix


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
        self.stats = {"judged": 0, "busy_s": 0.0}
        self.backend = make_backend(judge, cluster, model_path=model_path, top_logprobs=top_logprobs, chat=chat, seed=seed)
        self.meter = JudgeMeter(ray.get_runtime_context().get_actor_name() or "judge")

    def _judge(self, items: list[Comparison]) -> list[float | None]:
        self.stats["judged"] += len(items)
        return list(self.backend.compare_batch(items))

    def _timed(self, call: Callable[[], Any]) -> Any:
        """Run one public call; count its busy seconds and report this judge's Ray metrics."""
        before, start = self.metrics(), time.perf_counter()
        result = call()
        self.stats["busy_s"] += time.perf_counter() - start
        self.meter.report(before, self.metrics())
        return result

    def compare_batch(self, items: list[Comparison]) -> list[float | None]:
        """P(a beats b) per comparison (None: not scored)."""
        return self._timed(lambda: self._judge(items))

    def rank(self, prompts: list[str], candidate_texts: list[list[str]], seed: int | None = None) -> RankingResult:
        """Iterative pairwise ranking of each prompt's candidates; `seed` (default: the actor's)
        seeds the prompts' tie-breaking coins."""
        return self._timed(lambda: iterative_ranking(
            prompts, candidate_texts, self._judge, both_orders=self.both_orders, seed=self.seed if seed is None else seed,
        ))

    def win_matrix(self, prompts: list[str], candidate_texts: list[list[str]]) -> list[WinRates]:
        """Every ordered pair of each prompt's candidates in one call; SPPO scores and win-probs."""
        return self._timed(lambda: win_rate_matrix(prompts, candidate_texts, self._judge))

    def metrics(self) -> dict[str, Any]:
        """Counters since start: judged (comparisons answered), busy_s, and the backend's (llm:
        asked, scored, retried, failed, calls, ..., prompt_tokens, prefix_cache_hits / _queries)."""
        return dict(self.backend.metrics(), **self.stats)


def make_backend(
    judge: JudgeConfig, cluster: ClusterConfig, *, model_path: str | None, top_logprobs: int, chat: bool | None, seed: int
) -> JudgeBackend:
    """The backend `judge.backend` names, built in this process (llm: its vLLM engine too)."""
    if judge.backend == "llm":
        from apo_pipeline.engine.vllm_env import apply_engine_env

        apply_engine_env()
        from apo_pipeline.engine.llm_judge import LLMJudgeBackend

        path = model_path or judge.model
        if path is None:
            raise ValueError("judge.model: the llm judge needs a model path")
        return LLMJudgeBackend(path, judge, cluster, top_logprobs=top_logprobs, chat=chat, seed=seed)
    from apo_pipeline.task.reward_judge import BradleyTerryRewardJudge, load_reward_fn

    return BradleyTerryRewardJudge(load_reward_fn(judge.reward_fn), scale=judge.bt_scale, mode=judge.mode, seed=seed)


def count_delta(now: dict[str, Any], seen: dict[str, Any]) -> dict[str, float]:
    """Increments since `seen` of the counters (numbers) in `now`; a counter below its last value
    restarted from 0 (the judge was restarted), so all of it is new. Other entries (the llm
    judge's start-up choices) are left out."""
    counters = {k: v for k, v in now.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {k: v - seen.get(k, 0) if v >= seen.get(k, 0) else v for k, v in counters.items()}


class JudgeMeter:
    """Ray metrics of one judge actor, tagged `judge=<name>`: counters `apo_judge_worker_comparisons`,
    `apo_judge_worker_prompt_tokens`, `apo_judge_worker_prefix_cache_hits`; gauges (of the last
    call) `apo_judge_worker_comparisons_per_s`, `apo_judge_worker_tokens_per_s`,
    `apo_judge_worker_prefix_cache_hit_rate`."""

    COUNTERS = {"judged": "comparisons", "prompt_tokens": "prompt_tokens", "prefix_cache_hits": "prefix_cache_hits"}

    def __init__(self, name: str) -> None:
        from ray.util.metrics import Counter, Gauge

        self.tags = {"judge": name}

        def metric(cls: type, field: str, what: str) -> Any:
            return cls(f"apo_judge_worker_{field}", description=f"{what} (per judge actor)", tag_keys=("judge",))

        self.counters = {k: metric(Counter, v, f"{v} judged / processed") for k, v in self.COUNTERS.items()}
        self.rates = {
            "comparisons_per_s": metric(Gauge, "comparisons_per_s", "comparisons per busy second, last call"),
            "tokens_per_s": metric(Gauge, "tokens_per_s", "judge prompt tokens per busy second, last call"),
            "prefix_cache_hit_rate": metric(Gauge, "prefix_cache_hit_rate", "prefix-cache hit tokens / looked up, last call"),
        }

    def report(self, before: dict[str, Any], after: dict[str, Any]) -> None:
        """Add one call's counts (`after` - `before`, two `Judge.metrics()`) and set its rates."""
        delta = count_delta(after, before)
        for key, counter in self.counters.items():
            if delta.get(key, 0) > 0:
                counter.inc(delta[key], tags=self.tags)
        seconds = max(delta["busy_s"], 1e-9)
        self.rates["comparisons_per_s"].set(delta["judged"] / seconds, tags=self.tags)
        if "prompt_tokens" in delta:
            self.rates["tokens_per_s"].set(delta["prompt_tokens"] / seconds, tags=self.tags)
        if delta.get("prefix_cache_queries", 0) > 0:
            rate = delta["prefix_cache_hits"] / delta["prefix_cache_queries"]
            self.rates["prefix_cache_hit_rate"].set(rate, tags=self.tags)
