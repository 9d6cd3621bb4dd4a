"""Deterministic data schedules of the loops (pure Python): segments and per-step batches.

A schedule depends only on (sizes, seed), never on timing, so a resumed run replays it exactly.
"""

from __future__ import annotations

import random
from typing import Sequence, TypeVar

T = TypeVar("T")


def split_segments(items: Sequence[T], parts: int) -> list[list[T]]:
    """Split `items` into `parts` contiguous chunks whose sizes differ by at most one."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    if len(items) < parts:
        raise ValueError(f"{len(items)} items cannot fill {parts} segments; use more prompts or fewer segments")
    base, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return out


def steps_per_part(total_steps: int, parts: int) -> list[int]:
    """`total_steps` shared over `parts` as evenly as possible (earlier parts get the remainder)."""
    base, extra = divmod(total_steps, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def step_batches(num_items: int, batch_size: int, num_steps: int, seed: int) -> list[list[int]]:
    """Indices of each step's batch: epochs of a seeded permutation, cut into `batch_size` pieces.

    Each step sees `min(batch_size, num_items)` distinct items; at an epoch boundary an item that
    would repeat inside a batch is deferred to the next batch, so no item is skipped.
    """
    if num_items < 1:
        raise ValueError("no training items: every prompt was dropped (see the judge / data counts)")
    size = min(batch_size, num_items)
    rng = random.Random(seed)
    stream: list[int] = []
    deferred: list[int] = []
    batches = []
    for _ in range(num_steps):
        batch, deferred = deferred, []
        while len(batch) < size:
            if not stream:
                stream = list(range(num_items))
                rng.shuffle(stream)
            item = stream.pop()
            (deferred if item in batch else batch).append(item)
        batches.append(batch)
    return batches


def epoch_steps(num_items: int, batch_size: int, epochs: int) -> int:
    """Optimizer steps for `epochs` passes over `num_items` with batches of `batch_size`."""
    return max(1, -(-num_items * epochs // batch_size))
