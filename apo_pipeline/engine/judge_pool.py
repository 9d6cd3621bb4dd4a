"""`JudgePool`: the driver-side handle on `cluster.judge_engines` `Judge` actors (`judge-0..J-1`).

Work is sharded by prompt: all comparisons of one prompt go to one judge, so its K-1 ranking
rounds (or its K (K-1) matrix entries) run there and share the prompt in that engine's prefix
cache. Prompts are spread by estimated work (characters of the comparisons asked; `spread`), and
results come back in the caller's order. Every random choice of a judge depends on the
prompt and the comparison, never on the shard (ranking tie-breaks: `ranking.tie_coin`; the
reward judge's `sample` draws: keyed by seed, prompt, a, b), so with one seed the rankings and
win-rate matrices are the same for any number of judges.

The judges are one restartable `WorkerGroup`: Ray restarts a dead judge, and the shard it had in
flight is sent again (a judge holds no state that matters: a reward function or a fixed model).

`take_counts` returns what the judges counted since its last call, summed, with the pool's
throughput over the wall seconds of its calls: comparisons_per_s, and for the llm backend
tokens_per_s and the prefix-cache hits read from vLLM's own metrics.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ray.actor import ActorHandle

from apo_pipeline.config.sections import ClusterConfig, JudgeConfig
from apo_pipeline.engine.judge import Judge, count_delta
from apo_pipeline.engine.placement import Placement
from apo_pipeline.engine.worker_group import WorkerGroup, gather, group_spread, spread
from apo_pipeline.judge_backend import Comparison
from apo_pipeline.ranking import RankingResult, WinRates

# Backend counters that go into the pipeline's "judge" event (the ranking counts the rest).
EVENT_COUNTS = ("scored", "retried", "overlong", "errors", "prompt_tokens", "prefix_cache_queries", "prefix_cache_hits")


def prompt_cost(prompt: Any, candidates: Sequence[str], comparisons: int) -> float:
    """Characters a judge reads for `comparisons` comparisons of one prompt's candidates."""
    mean = sum(map(len, candidates)) / max(len(candidates), 1)
    return comparisons * (len(str(prompt)) + 2 * mean)


def merge_rankings(shards: Sequence[Sequence[int]], parts: Sequence[RankingResult | None], num_prompts: int) -> RankingResult:
    """One `RankingResult` from per-judge results of `shards` (prompt indices; None: an idle judge).

    Prompts in input order, totals summed; `judge_calls` is the rounds played, the most any judge
    played (the judges play their rounds at the same time)."""
    done = [(s, p) for s, p in zip(shards, parts) if p is not None]
    prompts = gather([s for s, _ in done], [p.prompts for _, p in done], num_prompts)
    calls = max((p.judge_calls for _, p in done), default=0)
    keys = {k for _, p in done for k in p.totals}
    totals = {k: sum(p.totals.get(k, 0) for _, p in done) for k in sorted(keys)}
    totals["judge_calls"] = calls
    return RankingResult(prompts=prompts, judge_calls=calls, totals=totals)


def judge_options(placement: Placement, num_judges: int) -> list[dict[str, Any]]:
    """`.options(...)` of `judge-0..num_judges-1`: each on its own placement group (llm backend; at
    TP > 1 vLLM's Ray executor puts the TP workers in that group's bundles), no bundle (reward)."""
    return [placement.options("judge", i) for i in range(num_judges)]


class JudgePool:
    """`cluster.judge_engines` judges placed by `placement` (`reward`: no bundle; `llm`: each on its
    own `judge_tp` bundles); `rank`, `win_rates` and `compare_batch` sharded over them."""

    def __init__(self, judge: JudgeConfig, cluster: ClusterConfig, placement: Placement, *, max_restarts: int = 0,
                 restart_timeout_s: float = 600.0, **judge_args: Any) -> None:
        """`judge_args`: what every `Judge` is built with besides the configs (`model_path`,
        `top_logprobs`, `chat`, `seed`; see `Judge`)."""
        self.both_orders = judge.both_orders
        self.group = WorkerGroup(Judge, judge_options(placement, cluster.judge_engines), judge, cluster,
                                 max_restarts=max_restarts, restart_timeout_s=restart_timeout_s, **judge_args)
        self.group.on_restart = self._on_restart
        self._seen: list[dict[str, Any]] = self.group.call("metrics")  # start-up work (label probes) is not counted
        self.seconds = 0.0  # wall seconds of calls since the last `take_counts`

    @property
    def judges(self) -> list[ActorHandle]:
        """The judge actors, `judge-<i>` at index i."""
        return self.group.workers

    def _on_restart(self, judges: set[int]) -> None:
        for i in judges:  # a restarted judge counts from 0 again
            self._seen[i] = {}

    def _spread(self, prompts: Sequence[Any], candidates: Sequence[Sequence[str]], per_prompt: int) -> list[list[int]]:
        return spread([prompt_cost(p, c, per_prompt * (len(c) - 1)) for p, c in zip(prompts, candidates)], len(self.judges))

    def rank(self, prompts: Sequence[Any], candidate_texts: Sequence[Sequence[str]], seed: int | None = None) -> RankingResult:
        """Iterative pairwise ranking of each prompt's candidates (`Judge.rank`), prompts sharded
        over the judges; `seed` seeds the tie-breaking coins (default: the judges')."""
        start = time.perf_counter()
        shards = self._spread(prompts, candidate_texts, 2 if self.both_orders else 1)
        args = [([prompts[i] for i in s], [list(candidate_texts[i]) for i in s], seed) if s else None for s in shards]
        result = merge_rankings(shards, self.group.call_shards("rank", args), len(prompts))
        self.seconds += time.perf_counter() - start
        return result

    def win_rates(self, prompts: Sequence[Any], candidate_texts: Sequence[Sequence[str]]) -> list[WinRates]:
        """Full K x K win-rate matrices with SPPO's scores (`Judge.win_matrix`), sharded by prompt."""
        start = time.perf_counter()
        shards = self._spread(prompts, candidate_texts, max((len(c) for c in candidate_texts), default=1))
        args = [([prompts[i] for i in s], [list(candidate_texts[i]) for i in s]) if s else None for s in shards]
        parts = self.group.call_shards("win_matrix", args)
        rates = gather(shards, [p if p is not None else [] for p in parts], len(prompts))
        self.seconds += time.perf_counter() - start
        return rates

    def compare_batch(self, items: Sequence[Comparison]) -> list[float | None]:
        """P(a beats b) per (prompt, a, b), None where not scored; comparisons of one prompt stay on
        one judge."""
        start = time.perf_counter()
        shards = group_spread([repr(p) for p, _, _ in items], [len(str(p)) + len(a) + len(b) for p, a, b in items],
                              len(self.judges))
        probs = self.group.shard(shards, "compare_batch", list(items))
        self.seconds += time.perf_counter() - start
        return probs

    def take_counts(self) -> dict[str, Any]:
        """Since the last call: the backend counts of `EVENT_COUNTS` (those the backend keeps),
        summed over the judges; `comparisons_per_s` (comparisons judged / wall seconds of the pool's
        calls), `tokens_per_s` (llm: judge prompt tokens, vLLM's count) and `judged_per_judge`."""
        now = self.group.call("metrics")
        deltas = [count_delta(m, seen) for m, seen in zip(now, self._seen)]
        self._seen = now
        seconds, self.seconds = self.seconds, 0.0
        out: dict[str, Any] = {k: sum(d[k] for d in deltas) for k in EVENT_COUNTS if k in deltas[0]}
        judged = [d["judged"] for d in deltas]
        out["comparisons_per_s"] = sum(judged) / seconds if seconds > 0 else 0.0
        if "prompt_tokens" in out:
            out["tokens_per_s"] = out["prompt_tokens"] / seconds if seconds > 0 else 0.0
        out["judged_per_judge"] = judged
        return out

    def shutdown(self, wait: bool = True) -> None:
        """Kill the judges; with `wait`, return once the names `judge-<i>` are free again."""
        self.group.shutdown(wait)
