"""`WorkerGroup`: N named Ray actors of one role, the machinery every pool of actors shares.

The generation pool (`gen-*`), the judge pool (`judge-*`) and the learner group (`learner-*`) are
each one `WorkerGroup` (in the manner of NeMo-RL's `RayWorkerGroup`) plus what is their own. The
group creates `actor_cls` once per entry of `options` (each entry a `.options(...)` dict naming
the actor and placing it), fans a call out to every worker, calls each worker with its own
arguments, shards a list over the workers and gathers the results back in input order, reports
the workers' process ids, and shuts down (kill, then wait until the names are free again).

Two kinds of groups:
- restartable (`max_restarts` > 0; generation engines, judges): Ray restarts a dead worker. A
  sharded call (`call_shards`) re-sends the shard of every worker that died during the call or
  whose process changed since the group last saw it, after `on_restart` has run (the generation
  pool pushes the current weights into a restarted engine there). Workers must answer a re-sent
  shard as the first attempt would have (seeds that depend on the items, never on the worker).
- fail-fast (`fail_fast=True`; the learner ranks, which run collectives): results are gathered
  with `get_all`, which raises the first failure as soon as it happens, since the other ranks
  would wait forever on a collective a dead rank never joins. No restarts.

The group is picklable (actor handles and plain data; `on_restart` is not sent).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import ray
from ray.actor import ActorClass, ActorHandle
from ray.exceptions import ActorUnavailableError, RayActorError

T = TypeVar("T")


def spread(costs: Sequence[float], num_workers: int) -> list[list[int]]:
    """Indices of `costs` per worker: each item, in order, to the worker with the least total so far."""
    shards: list[list[int]] = [[] for _ in range(num_workers)]
    loads = [0.0] * num_workers
    for i, cost in enumerate(costs):
        w = loads.index(min(loads))
        shards[w].append(i)
        loads[w] += cost
    return shards


def gather(shards: Sequence[Sequence[int]], parts: Sequence[Sequence[T]], num_items: int) -> list[T]:
    """Per-worker results back in input order: `parts[w][j]` answers item `shards[w][j]`.

    Raises ValueError when a worker returned a different number of results than it was given, or
    the shards do not cover items 0..num_items-1 exactly once."""
    out: list[Any] = [None] * num_items
    seen = 0
    for w, (shard, part) in enumerate(zip(shards, parts, strict=True)):
        if len(shard) != len(part):
            raise ValueError(f"worker {w} returned {len(part)} results for {len(shard)} items")
        for i, value in zip(shard, part):
            out[i] = value
        seen += len(shard)
    if seen != num_items or sorted(i for shard in shards for i in shard) != list(range(num_items)):
        raise ValueError(f"shards {[len(s) for s in shards]} do not cover {num_items} items once each")
    return out


def group_spread(keys: Sequence[Hashable], costs: Sequence[float], num_workers: int) -> list[list[int]]:
    """Like `spread`, but items with equal keys stay together on one worker (in input order):
    groups, in order of first appearance, go to the least loaded worker."""
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    members = list(groups.values())
    per_worker = spread([sum(costs[i] for i in g) for g in members], num_workers)
    return [sorted(i for g in gs for i in members[g]) for gs in per_worker]


def get_all(refs: list[ray.ObjectRef]) -> list[Any]:
    """`ray.get(refs)`, but the first failure is raised as soon as it happens (fail-fast gathering:
    ranks that run collectives would otherwise wait forever on a dead one)."""
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        ray.get(ready)
    return ray.get(refs)


def wait_names_free(names: Sequence[str], timeout_s: float = 60.0) -> None:
    """Poll until no live actor holds any of `names` (ray.kill returns before the name is released)."""
    deadline = time.monotonic() + timeout_s
    for name in names:
        while time.monotonic() < deadline:
            try:
                ray.get_actor(name)
            except ValueError:
                break
            time.sleep(0.2)


def release_names(names: Sequence[str]) -> None:
    """Kill (without restart) every live actor that holds one of `names`, then wait until all are free."""
    for name in names:
        try:
            ray.kill(ray.get_actor(name))
        except ValueError:  # no such actor
            continue
    wait_names_free(names)


def _pid(actor: Any) -> int:
    return os.getpid()


class WorkerGroup:
    """`len(options)` actors of `actor_cls`, worker i created with `options[i]` (which must hold
    its `name`) and the same constructor arguments. Waits until every worker is up."""

    def __init__(
        self,
        actor_cls: ActorClass,
        options: Sequence[dict[str, Any]],
        *args: Any,
        max_restarts: int = 0,
        restart_timeout_s: float = 600.0,
        fail_fast: bool = False,
        **kwargs: Any,
    ) -> None:
        if fail_fast and max_restarts:
            raise ValueError("a fail-fast group (collectives) cannot restart workers")
        self.names = [o["name"] for o in options]
        self.max_restarts = max_restarts
        self.restart_timeout_s = restart_timeout_s
        self.fail_fast = fail_fast
        self.on_restart: Callable[[set[int]], None] | None = None
        self.restarts = 0
        self.workers: list[ActorHandle] = [
            actor_cls.options(**o, max_restarts=max_restarts).remote(*args, **kwargs) for o in options
        ]
        try:
            self.pids = self.live_pids()
        except BaseException:
            self.shutdown(wait=False)
            raise

    def __len__(self) -> int:
        return len(self.workers)

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__, on_restart=None)

    def _get(self, refs: list[ray.ObjectRef]) -> list[Any]:
        return get_all(refs) if self.fail_fast else ray.get(refs)

    def call(self, method: str, *args: Any) -> list[Any]:
        """`method(*args)` on every worker at once; the results in worker order."""
        return self._get([getattr(w, method).remote(*args) for w in self.workers])

    def call_each(self, method: str, args: Sequence[tuple]) -> list[Any]:
        """`method(*args[i])` on worker i, all at once; the results in worker order."""
        if len(args) != len(self.workers):
            raise ValueError(f"{len(args)} argument tuples for {len(self.workers)} workers")
        return self._get([getattr(w, method).remote(*a) for w, a in zip(self.workers, args)])

    def call_shards(self, method: str, args: Sequence[tuple | None]) -> list[Any]:
        """`method(*args[i])` on each worker i whose `args[i]` is not None (None answers for the
        others); results in worker order. Restartable groups re-send the calls of workers that died
        or restarted (at most `max_restarts` times) after `_recover`. Fail-fast groups call every
        worker (ranks run collectives, so each must join even without data of its own)."""
        if len(args) != len(self.workers):
            raise ValueError(f"{len(args)} argument tuples for {len(self.workers)} workers")
        if self.fail_fast:
            return self.call_each(method, [a if a is not None else () for a in args])
        busy = {i for i, a in enumerate(args) if a is not None}
        results: dict[int, Any] = {}
        todo = sorted(busy)
        restarted: set[int] = set()
        for attempt in range(self.max_restarts + 1):
            refs = {i: getattr(self.workers[i], method).remote(*args[i]) for i in todo}
            failed = set()
            for i, ref in refs.items():
                try:
                    results[i] = ray.get(ref)
                except RayActorError:
                    failed.add(i)
            restarted = failed | self.restarted()
            if not restarted:
                return [results.get(i) for i in range(len(args))]
            if attempt == self.max_restarts:
                break
            self._recover(restarted)
            todo = sorted(restarted & busy)
        raise RuntimeError(
            f"{[self.names[i] for i in sorted(restarted)]} died again after {self.max_restarts} restart(s)"
        )

    def shard(self, shards: Sequence[Sequence[int]], method: str, items: Sequence[Any], *args: Any) -> list[Any]:
        """`method(items of shards[w], *args)` on each worker w with a non-empty shard, answering one
        result per item; the results in item order (`gather`)."""
        parts = self.call_shards(method, [([items[i] for i in s], *args) if s else None for s in shards])
        return gather(shards, [p if p is not None else [] for p in parts], len(items))

    def live_pids(self) -> list[int]:
        """Every worker's process id, waiting (up to `restart_timeout_s`) for restarting ones."""
        deadline = time.monotonic() + self.restart_timeout_s
        pids = []
        for worker in self.workers:
            while True:
                try:
                    pids.append(ray.get(worker.__ray_call__.remote(_pid), timeout=self.restart_timeout_s))
                    break
                except ActorUnavailableError:  # restarting: Ray refuses calls until it is back
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
        return pids

    def actor_pids(self) -> dict[str, int]:
        """Process id of every worker by its actor name (what an operator kills or inspects)."""
        return dict(zip(self.names, self.live_pids()))

    def restarted(self) -> set[int]:
        """Workers whose process changed since the group last saw it."""
        return {i for i, (old, new) in enumerate(zip(self.pids, self.live_pids())) if old != new}

    def _recover(self, workers: set[int]) -> None:
        """Wait for restarted `workers`, note their pids, count them, run `on_restart`."""
        self.pids = self.live_pids()
        self.restarts += len(workers)
        if self.on_restart is not None:
            self.on_restart(workers)

    def shutdown(self, wait: bool = True) -> None:
        """Kill every worker; with `wait`, return once their names can be used again."""
        for worker in self.workers:
            ray.kill(worker)
        self.workers = []
        if wait:
            wait_names_free(self.names)
