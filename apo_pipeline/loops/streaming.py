"""Streamed rounds (`loop.stream`; docs/algorithms.md): one round's stages overlap by chunks of prompts.

    cut the round's prompts into chunks of loop.stream_chunk
    generation thread: sample each chunk in turn (the engines keep the round-start weights)
    judge thread:      judge each chunk as soon as it is generated
    this thread:       for each judged chunk j, in order:
                           store log pi_ref of its candidates (the engines' log-probs, or the
                           learner under the reference / round-start weights, never moved ones)
                           run the steps unlocked so far, floor(S P_j / P), on seeded batches
                       after the last chunk: store the round's tables, then the remaining steps
                       (mid-round checkpoints only from here on)

The stage threads call the pools' usual restart-aware methods; Ray runs their calls at once, so
the judge works while the engines sample the next chunk and while the learner trains. At most
`INFLIGHT` generated chunks wait for the judge. The schedule (`stream_plan`) depends on sizes and
seeds only, so a streamed run, and a resumed one, trains on the same batches whatever the timing.
The learner keeps the round-start weights until the round's data is complete: they are pi_ref
(under `round`), and what an engine that Ray restarts mid-round is re-synced with (the pool's
restart hook, `Pipeline.engine_weights`), since the training weights have moved on by then.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apo_pipeline.loops.pairs import Judged
from apo_pipeline.loops.pipeline import Pipeline
from apo_pipeline.loops.stream_plan import StreamBatches, cut, ready_per_step, stream_batches, unlocked_steps
from apo_pipeline.rollout import Rollout, TrainGroup
from apo_pipeline.seeds import derive_seed
from apo_pipeline.storage import Judgement, atomic_write_text

INFLIGHT = 2  # generated chunks that may wait for the judge
ROUND_START = "round_start"  # the learner's kept copy of the round-start weights (the engines' weights)
PLAN_FILE = "stream.json"  # per round: prompts and groups per chunk (the batches of a resumed round)

JudgeFn = Callable[[list[Rollout], int], Judged]  # (a chunk's rollouts, chunk number) -> verdicts


def streamed_round(pipe: Pipeline, prompts: list[Any], index: int, steps: int, step: int, done_steps: int,
                   judge: JudgeFn, reference: str | None) -> int:
    """Round `index` streamed: its data (tables written) and its `steps` optimizer steps (the next
    global step is `step`, `done_steps` of them restored). `reference`: the learner's kept weights
    holding pi_ref, None for the round's start. Returns the next global step."""
    first = step - done_steps
    stored = pipe.store.stored_pairs(index)
    if stored is not None:  # an earlier attempt completed the round's data: train what is left
        batches = stream_batches(_stored_ready(pipe, index, len(prompts), len(stored), steps), pipe.batch_size,
                                 _seeds(pipe, index))
        pipe.train_steps(stored, batches, index, first, range(done_steps, steps), steps)
        return first + steps
    pipe.learner.keep_weights(ROUND_START)  # free to swap in until the first step moves the weights
    pipe.engine_weights = ROUND_START
    if reference is None and not pipe.cfg.algorithm.reference_from_engines:
        reference = ROUND_START
    chunks = cut(prompts, pipe.cfg.loop.stream_chunk)
    unlocked = unlocked_steps([len(c) for _, c in chunks], steps)
    draw = StreamBatches(pipe.batch_size, _seeds(pipe, index))
    data = RoundData()
    batches: list[list[int]] = []
    with StageThreads(pipe, index, chunks, judge) as arrivals:
        for j, (rollouts, verdicts) in enumerate(arrivals):
            data.add(pipe.reference_of(verdicts.built, rollouts, index, reference, chunk=j), rollouts, verdicts)
            last = j == len(chunks) - 1
            if last:  # the round's data is complete: stored before any mid-round checkpoint
                _store_round(pipe, index, [len(c) for _, c in chunks], data)
                pipe.learner.drop_weights(ROUND_START)  # every chunk is sampled: the engines are free
                pipe.engine_weights = None
            due = ready_per_step(unlocked[:j + 1], data.ready)[len(batches):]
            batches += [draw.next(r) for r in due]
            if due:
                pipe.train_steps(data.groups, batches, index, first, range(len(batches) - len(due), len(batches)),
                                 steps, chunk=j, checkpoints=last)
    return first + steps


@dataclass
class RoundData:
    """What a streamed round has gathered so far, chunk by chunk."""

    rollouts: list[Rollout] = field(default_factory=list)
    judgements: list[Judgement] = field(default_factory=list)
    groups: list[TrainGroup] = field(default_factory=list)
    dropped: int = 0
    ready: list[int] = field(default_factory=list)  # groups after each chunk (cumulative)

    def add(self, groups: list[TrainGroup], rollouts: list[Rollout], verdicts: Judged) -> None:
        self.groups += groups
        self.rollouts += rollouts
        self.judgements += verdicts.judgements
        self.dropped += verdicts.built.dropped
        self.ready.append(len(self.groups))


def _seeds(pipe: Pipeline, index: int) -> Callable[[int], int]:
    return lambda n: derive_seed(pipe.cfg.seed, "stream-batches", index, n)


def _plan_path(pipe: Pipeline, index: int) -> Path:
    return pipe.run_dir.round_dir(index, pipe.unit) / PLAN_FILE


def _store_round(pipe: Pipeline, index: int, sizes: list[int], data: RoundData) -> None:
    """The round's chunk plan and tables (pairs last: its presence marks complete data); stops the
    run when the judge dropped every prompt of the round."""
    pipe.rounds.event("data", index, prompts=len(data.rollouts), dropped_by_judge=data.dropped, chunks=len(sizes))
    pipe._stop_if_all_dropped(index, [j.winner for j in data.judgements], {"dropped": data.dropped})
    path = _plan_path(pipe, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"chunk_prompts": sizes, "chunk_groups": data.ready}))
    pipe.store.save_tables(index, data.rollouts, data.judgements, data.groups)


def _stored_ready(pipe: Pipeline, index: int, prompts: int, groups: int, steps: int) -> list[int]:
    """Ready groups per step of a stored round, from its chunk plan (none: one chunk)."""
    path = _plan_path(pipe, index)
    plan = json.loads(path.read_text()) if path.is_file() else {"chunk_prompts": [prompts], "chunk_groups": [groups]}
    return ready_per_step(unlocked_steps(plan["chunk_prompts"], steps), plan["chunk_groups"])


class StageThreads:
    """The generation and judge threads of one streamed round; iterating yields (rollouts, verdicts)
    per chunk in order and re-raises a stage's failure here. Leaving the block stops both threads."""

    def __init__(self, pipe: Pipeline, index: int, chunks: list[tuple[int, list[Any]]], judge: JudgeFn) -> None:
        self.count = len(chunks)
        self.stop = threading.Event()
        self.generated: queue.Queue = queue.Queue(maxsize=INFLIGHT)
        self.judged: queue.Queue = queue.Queue()

        def generate(item: tuple[int, tuple[int, list[Any]]]) -> tuple[int, list[Rollout]]:
            j, (start, chunk) = item
            return j, pipe.generate(chunk, index, chunk=j, first=start)

        def judge_chunk(item: tuple[int, list[Rollout]]) -> tuple[list[Rollout], Judged]:
            j, rollouts = item
            return rollouts, judge(rollouts, j)

        self.threads = [
            threading.Thread(target=self._run, args=(enumerate(chunks), generate, self.generated), daemon=True,
                             name=f"stream-generate-{index}"),
            threading.Thread(target=self._run, args=(self._take(self.generated), judge_chunk, self.judged),
                             daemon=True, name=f"stream-judge-{index}"),
        ]

    def __enter__(self) -> Iterator[tuple[list[Rollout], Judged]]:
        for thread in self.threads:
            thread.start()
        return self._take(self.judged)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=0 if exc[0] else None)

    def _take(self, source: queue.Queue) -> Iterator[Any]:
        """The `count` items of `source`, in order; a stage's exception is raised instead."""
        for _ in range(self.count):
            item = source.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    def _run(self, items: Iterable[Any], work: Callable[[Any], Any], out: queue.Queue) -> None:
        """`work` on each item, results to `out` (blocking while it is full); a failure goes to `out`."""
        try:
            for item in items:
                if self.stop.is_set():
                    return
                result = work(item)
                while not self.stop.is_set():
                    try:
                        out.put(result, timeout=0.2)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # noqa: BLE001 -- handed to the round's thread, which raises it
            out.put(exc)
