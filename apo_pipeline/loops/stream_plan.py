"""The schedule of a streamed round (docs/algorithms.md), pure Python: chunks, unlocked steps, batches.

A round's P prompts are cut, in order, into chunks of `chunk` prompts (the last one shorter).
After chunks 1..j (P_j prompts) are judged and have their reference log-probs, floor(S P_j / P) of
the round's S optimizer steps may have run. Step n's batch is drawn from the groups ready when it
was unlocked, seeded by (run seed, round, step): `StreamBatches` keeps a queue of the groups not yet
trained on in the current pass (new groups join it in a seeded order), takes each batch from its
front and starts a new seeded pass over every ready group when it runs dry. Everything depends on
sizes and seeds only, never on timing, so two streamed runs with one seed (and a resumed run)
train on identical batches.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Sequence, TypeVar

T = TypeVar("T")


def chunk_sizes(prompts: int, chunk: int) -> list[int]:
    """Prompts per chunk, in order: full chunks of `chunk`, then the rest (as the simulator cuts)."""
    if chunk < 1:
        raise ValueError(f"chunk: need >= 1 prompts, got {chunk}")
    full, rest = divmod(prompts, chunk)
    return [chunk] * full + ([rest] if rest else [])


def cut(items: Sequence[T], chunk: int) -> list[tuple[int, list[T]]]:
    """`items` in chunks of `chunk`: (index of the chunk's first item, its items)."""
    out, start = [], 0
    for size in chunk_sizes(len(items), chunk):
        out.append((start, list(items[start:start + size])))
        start += size
    return out


def unlocked_steps(sizes: Sequence[int], steps: int) -> list[int]:
    """After each chunk j: how many of the round's `steps` steps may have run, floor(S P_j / P)."""
    total, done, out = sum(sizes), 0, []
    for size in sizes:
        done += size
        out.append(steps * done // total)
    return out


def ready_per_step(unlocked: Sequence[int], ready_groups: Sequence[int]) -> list[int]:
    """Groups ready for each step that may run after the chunks given: step n runs after the first
    chunk j with unlocked[j] > n, when `ready_groups[j]` groups (cumulative over chunks 1..j)
    exist; while none exists (the judge dropped every prompt so far), its steps wait for the next
    chunk that brings some."""
    out, start, waiting = [], 0, 0
    for until, ready in zip(unlocked, ready_groups, strict=True):
        waiting, start = waiting + until - start, until
        if ready > 0:
            out.extend([ready] * waiting)
            waiting = 0
    return out


class StreamBatches:
    """Step batches (indices into the round's groups, in arrival order) from a growing pool."""

    def __init__(self, batch_size: int, seed_of: Callable[[int], int]) -> None:
        self.batch_size = batch_size
        self.seed_of = seed_of  # step -> seed
        self.queue: list[int] = []  # groups not yet trained on in this pass, in the order to take them
        self.seen = 0  # groups that have joined so far
        self.step = 0

    def next(self, ready: int) -> list[int]:
        """The batch of the next step, drawn from groups 0..ready-1 (`ready` never decreases)."""
        if ready < 1:
            raise ValueError("no training items: every prompt of the chunks so far was dropped (see the judge counts)")
        if ready < self.seen:
            raise ValueError(f"ready groups went down from {self.seen} to {ready}")
        rng = random.Random(self.seed_of(self.step))
        new = list(range(self.seen, ready))
        rng.shuffle(new)
        self.queue += new
        self.seen = ready
        batch: list[int] = []
        deferred: list[int] = []
        while len(batch) < min(self.batch_size, ready):
            if not self.queue:  # a new pass over every ready group
                self.queue = list(range(ready))
                rng.shuffle(self.queue)
            item = self.queue.pop(0)
            (deferred if item in batch else batch).append(item)
        self.queue = deferred + self.queue
        self.step += 1
        return batch


def stream_batches(ready: Sequence[int], batch_size: int, seed_of: Callable[[int], int]) -> list[list[int]]:
    """Every step's batch for the per-step ready counts `ready` (`ready_per_step`)."""
    draw = StreamBatches(batch_size, seed_of)
    return [draw.next(r) for r in ready]
