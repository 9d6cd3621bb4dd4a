"""`GenerationPool`: the driver-side handle on N `GenerationEngine` actors.

Prompts are tokenized once (by engine 0), checked against the length limit, and spread over the
engines by estimated work: each prompt, in order, goes to the engine with the least work so far,
where a prompt costs its prompt tokens + K * max_tokens. Results come back in prompt order with
`Rollout.prompt_index` = the prompt's position in the caller's list. Seeds depend on that index
only, so the same call gives the same candidates with any number of engines.

Prompts longer than `max_prompt_tokens` (or than max_model_len - max_tokens) are `overlong`:
`skip` leaves them out of the results, `truncate` keeps their last tokens (the end of a prompt is
where a chat template's generation prompt sits; `Rollout.prompt` stays the full text, `prompt_ids`
are what the engine saw). Both are counted in `metrics()`.

Engine deaths: the engines are one restartable `WorkerGroup`; a call whose engine died, and a
call answered by an engine that restarted since the pool last saw it (its pid changed, so it may
hold the initial weights), is sent again once the engine is back, after `restart_hook` (the
pipeline's weight re-sync) has run. Seeds depend only on prompt indices, so the re-sent shard
returns what the first attempt would have: no prompt is lost or duplicated. Restarts are counted
in `metrics()`.

The pool object is picklable (actor handles + plain data; the hook is not sent): the
`weight-sync` actor holds a copy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, Literal

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError
from ray.experimental import get_object_locations

from apo_pipeline.config.sections import ClusterConfig, GenerationConfig, ModelConfig, SyncConfig
from apo_pipeline.engine.generation import EncodedPrompt, GenerationEngine, Prompt
from apo_pipeline.engine.placement import Placement
from apo_pipeline.engine.vllm_env import LogprobsMode, sync_backend
from apo_pipeline.engine.worker_group import WorkerGroup, spread
from apo_pipeline.rollout import Rollout


class GenerationPool:
    """N engines `gen-0..N-1` placed by `placement`; sampling, greedy generation, weight updates."""

    def __init__(
        self,
        model_path: str,
        model: ModelConfig,
        cluster: ClusterConfig,
        placement: Placement,
        *,
        sync: SyncConfig | None = None,
        max_prompt_tokens: int | None = None,
        overlong: Literal["skip", "truncate"] = "skip",
        logprobs_mode: LogprobsMode = "processed_logprobs",
        seed: int = 0,
        max_restarts: int = 0,
        restart_timeout_s: float = 600.0,
    ) -> None:
        self.restart_hook: Callable[[], None] | None = None
        self.num_engines = cluster.num_engines
        self.engine_tp = cluster.engine_tp
        self.max_model_len = model.max_model_len
        self.max_prompt_tokens = max_prompt_tokens
        self.overlong = overlong
        self.backend = sync_backend(sync or SyncConfig(), cluster)
        self.group = WorkerGroup(
            GenerationEngine,
            [placement.options("gen", i) for i in range(self.num_engines)],
            model_path,
            model,
            cluster,
            weight_transfer_backend=self.backend,
            logprobs_mode=logprobs_mode,
            seed=seed,
            max_restarts=max_restarts,
            restart_timeout_s=restart_timeout_s,
        )
        self.group.on_restart = self._on_restart
        self.totals: dict[str, float] = {
            "calls": 0, "prompts": 0, "candidates": 0, "tokens": 0, "seconds": 0.0, "skipped": 0, "truncated": 0,
            "engine_restarts": 0,
        }
        self.last: dict[str, Any] = {}

    @property
    def engines(self) -> list[ActorHandle]:
        """The engine actors, `gen-<i>` at index i."""
        return self.group.workers

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__, restart_hook=None)

    def _on_restart(self, engines: set[int]) -> None:
        """Restarted engines may hold the initial weights: count them, run `restart_hook` (re-sync)."""
        self.totals["engine_restarts"] += len(engines)
        if self.restart_hook is not None:
            self.restart_hook()

    def _encode(self, prompts: list[Prompt], start: int = 0) -> list[EncodedPrompt]:
        """Tokenize on engine 0 (weights play no part, so a restarted engine answers the same);
        prompt indices start at `start`."""
        retries = self.group.max_restarts
        while True:
            try:
                return ray.get(self.engines[0].encode.remote(prompts, start))
            except RayActorError:
                if retries == 0:
                    raise
                retries -= 1
                self.group.live_pids()  # wait until it is back

    def _prepare(self, prompts: list[Prompt], max_tokens: int, start: int = 0) -> list[EncodedPrompt]:
        """Tokenize on engine 0 and apply the overlong policy; counts go to `self.last`."""
        encoded = self._encode(prompts, start)
        limit = self.max_model_len - max_tokens
        if self.max_prompt_tokens is not None:
            limit = min(limit, self.max_prompt_tokens)
        if limit < 1:
            raise ValueError(f"max_tokens={max_tokens} leaves no room for a prompt in max_model_len={self.max_model_len}")
        over = [p.index for p in encoded if len(p.token_ids) > limit]
        self.last = {"overlong": over, "skipped": 0, "truncated": 0}
        if not over:
            return encoded
        if self.overlong == "skip":
            self.last["skipped"] = len(over)
            return [p for p in encoded if len(p.token_ids) <= limit]
        self.last["truncated"] = len(over)
        return [p if len(p.token_ids) <= limit else replace(p, token_ids=p.token_ids[-limit:]) for p in encoded]

    def _run(self, prompts: list[Prompt], max_tokens: int, k: int, method: str, *args: Any, first: int = 0) -> list[Rollout]:
        start = time.perf_counter()
        encoded = self._prepare(prompts, max_tokens, first)
        shards = spread([len(p.token_ids) + k * max_tokens for p in encoded], self.num_engines)
        rollouts = self.group.shard(shards, method, encoded, *args)
        seconds = time.perf_counter() - start
        tokens = sum(len(c.token_ids) for r in rollouts for c in r.candidates)
        self.last.update(
            prompts=len(rollouts),
            candidates=len(rollouts) * k,
            tokens=tokens,
            seconds=seconds,
            tokens_per_s=tokens / max(seconds, 1e-9),
            prompts_per_engine=[len(s) for s in shards],
        )
        for key in ("prompts", "candidates", "tokens", "seconds", "skipped", "truncated"):
            self.totals[key] += self.last[key]
        self.totals["calls"] += 1
        return rollouts

    def sample(self, prompts: list[Prompt], gen: GenerationConfig, seed: int, first: int = 0) -> list[Rollout]:
        """K = gen.num_candidates candidates per kept prompt, in prompt order, grouped by temperature.
        `first`: the index of `prompts[0]` in the round (a streamed chunk's offset): prompt indices,
        and hence the seeds, are those the whole round's call would give."""
        return self._run(
            prompts, gen.max_tokens, gen.num_candidates, "sample",
            gen.n_per_temperature, list(gen.temperatures), gen.max_tokens, seed, gen.top_p, first=first,
        )

    def generate_greedy(self, prompts: list[Prompt], max_tokens: int) -> list[Rollout]:
        """One greedy candidate per kept prompt, in prompt order (evaluation)."""
        return self._run(prompts, max_tokens, 1, "generate_greedy", max_tokens)

    def metrics(self) -> dict[str, Any]:
        """`last` call (prompts, candidates, tokens, seconds, tokens_per_s, overlong, skipped,
        truncated, prompts_per_engine) and running `totals` (plus their tokens_per_s)."""
        totals = dict(self.totals, tokens_per_s=self.totals["tokens"] / max(self.totals["seconds"], 1e-9))
        return {"last": dict(self.last), "totals": totals}

    def fan_out(self, method: str, *args: Any) -> list[Any]:
        """Call `method(*args)` on every engine concurrently; their results, in engine order."""
        return self.group.call(method, *args)

    def sleep(self, level: int = 1) -> bool:
        """Sleep every engine (GPU, colocated); False where sleep mode is off (CPU)."""
        return all(self.fan_out("sleep", level))

    def wake_up(self, tags: list[str] | None = None) -> bool:
        return all(self.fan_out("wake_up", tags))

    def init_weight_transfer(self, init_info: dict[str, Any]) -> None:
        """`init_weight_transfer_engine` on every engine; a `rank_offset` (NCCL) becomes per-engine
        (engine i's workers start at rank_offset + i * engine_tp)."""
        infos = [dict(init_info) for _ in self.engines]
        if "rank_offset" in init_info:
            for i, info in enumerate(infos):
                info["rank_offset"] = init_info["rank_offset"] + i * self.engine_tp
        self.group.call_each("init_weight_transfer_engine", [(info,) for info in infos])

    def update_weights(self, bucket_source: Iterable[ray.ObjectRef], max_inflight: int = 2) -> tuple[int, int]:
        """Feed every bucket ref (CPU object-store backend) to all engines; (buckets, bytes) loaded.

        All engines work concurrently; at most `max_inflight` buckets per engine are queued, so a
        lazy source (a Ray streaming generator) is consumed no faster than the engines load.
        """
        ray.get([e.start_weight_update.remote() for e in self.engines])
        pending: list[list[ray.ObjectRef]] = []
        buckets = nbytes = 0
        for ref in bucket_source:
            if len(pending) >= max_inflight:
                ray.get(pending.pop(0))
            pending.append([e.update_weights.remote({"bucket": ref}) for e in self.engines])
            nbytes += get_object_locations([ref])[ref]["object_size"]
            buckets += 1
        ray.get([r for calls in pending for r in calls])
        ray.get([e.finish_weight_update.remote() for e in self.engines])
        return buckets, nbytes
