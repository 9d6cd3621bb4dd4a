"""The round as a task graph, run by a discrete-event list scheduler.

Tasks (one per stage call) occupy roles' actors: generation engines, judges, learner ranks, the
driver. A role runs one task at a time (its whole pool works on it); colocated generation and
learner share one set of GPUs, so only one of them runs, with a sleep or wake of the engines
(`Layout.switch_s`) between them. Whenever a role is free, the ready task that is furthest
upstream runs first (generation before judge before reference before training; earlier chunks
first). With `Layout.cores` set, all running tasks share that many CPU cores: each progresses at
min(1, cores / demand), demand being the summed `Layout.demand` of the running tasks.

Sequential mode chains every task after the previous one. Streamed mode (STREAMING.md) cuts
the prompts into chunks: generation works the chunks in order, the judge takes a chunk once
generated, the learner computes its reference log-probs (or they come free with the samples),
and optimizer step k waits for the first chunks whose prompts P_j satisfy floor(S P_j / P) >= k.
Both end with sync -> evaluation -> checkpoint -> the driver's per-round bookkeeping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from apo_pipeline.simulate.rates import StageRates
from apo_pipeline.simulate.workload import ROLES, Layout, RoundWorkload, Schedule

EPS = 1e-12
STAGE_ORDER = ("generate", "judge", "driver", "ref_logprobs", "train", "sync", "eval", "eval_judge", "checkpoint")
STAGE_ROLES: dict[str, tuple[str, ...]] = {
    "generate": ("generation",), "judge": ("judge",), "driver": ("driver",), "ref_logprobs": ("learner",),
    "train": ("learner",), "sync": ("learner", "generation"), "eval": ("generation",), "eval_judge": ("judge",),
    "checkpoint": ("learner",),
}
AWAKE = {"generate": True, "sync": True, "eval": True, "ref_logprobs": False, "train": False}


@dataclass
class Task:
    """One stage call: `seconds` of work (at full speed) on `roles`, after the tasks `deps`."""

    stage: str
    roles: tuple[str, ...]
    seconds: float
    deps: list[int]
    index: int = 0  # chunk or step number: the priority within a stage
    start: float = math.nan
    end: float = math.nan


@dataclass
class RoundResult:
    """A simulated round. stage_s: wall seconds per stage (summed over its calls); busy_s: seconds
    each role had work; switch_s: sleep/wake seconds (inside stage_s); tasks: the timeline."""

    wall_s: float
    stage_s: dict[str, float]
    busy_s: dict[str, float]
    switch_s: float
    tasks: list[Task] = field(default_factory=list)

    @property
    def overlap(self) -> float:
        """Sum of the stage times / round wall time (1.0 = nothing overlapped)."""
        return sum(self.stage_s.values()) / self.wall_s if self.wall_s > 0 else 1.0

    def busy_fraction(self, role: str) -> float:
        return self.busy_s.get(role, 0.0) / self.wall_s if self.wall_s > 0 else 0.0


def build_tasks(work: RoundWorkload, layout: Layout, rates: StageRates, schedule: Schedule) -> list[Task]:
    """The round's task graph (see the module docstring)."""
    tasks: list[Task] = []
    sequential = schedule.mode == "sequential"

    def add(stage: str, seconds: float, deps: list[int | None], index: int = 0) -> int:
        deps = [d for d in deps if d is not None]
        if sequential and tasks:
            deps.append(len(tasks) - 1)
        tasks.append(Task(stage, STAGE_ROLES[stage], seconds, sorted(set(deps)), index))
        return len(tasks) - 1

    def share(total: float, prompts: int) -> float:
        return total * prompts / work.prompts

    gen = judge = ref = None
    ready: list[tuple[int, int]] = []  # (prompts ready after this chunk, the task that readies them)
    done_prompts = 0
    for j, c in enumerate(schedule.chunks(work.prompts)):
        gen = add("generate", rates["generate"].seconds(share(work.candidates, c), layout.engines), [gen], j)
        judge = add("judge", rates["judge"].seconds(share(work.judge_requests, c), layout.judges), [gen, judge], j)
        last = add("driver", rates["driver"].per_unit * c, [judge], j)
        if not schedule.ref_from_engines:
            cost = rates["ref_logprobs"].seconds(share(work.ref_sequences, c), layout.learner_ranks)
            ref = last = add("ref_logprobs", cost, [last, ref], j)
        done_prompts += c
        ready.append((done_prompts, last))
    step = None
    for k in range(1, work.steps + 1):
        unlock = next(t for p, t in ready if work.steps * p // work.prompts >= k)
        step = add("train", rates["train"].seconds(work.batch, layout.learner_ranks), [unlock, step], k)
    tail = add("sync", rates["sync"].seconds(), [step, ready[-1][1]])
    if work.eval_prompts:
        tail = add("eval", rates["eval"].seconds(work.eval_prompts, layout.engines), [tail])
        tail = add("eval_judge", rates["eval_judge"].seconds(work.eval_judge_requests, layout.judges), [tail])
    if work.checkpoint:
        tail = add("checkpoint", rates["checkpoint"].seconds(), [tail])
    add("driver", rates["driver"].fixed, [tail], len(ready))
    return tasks


def _resources(layout: Layout, roles: tuple[str, ...]) -> set[str]:
    """Physical resources behind `roles` (colocated generation and learner are one)."""
    return {"learner" if layout.colocate and r == "generation" else r for r in roles}


def run_tasks(tasks: list[Task], layout: Layout) -> RoundResult:
    """List-schedule `tasks` (in place: start/end set) and account wall, stage and busy times."""
    n = len(tasks)
    remaining = [t.seconds for t in tasks]
    done = [False] * n
    started = [False] * n
    running: list[int] = []
    held: set[str] = set()
    awake = True  # the round starts after a sync: the engines are awake
    now = switch_total = 0.0
    busy = dict.fromkeys(ROLES, 0.0)
    order = sorted(range(n), key=lambda i: (STAGE_ORDER.index(tasks[i].stage), tasks[i].index, i))
    while not all(done):
        for i in order:
            t = tasks[i]
            need = _resources(layout, t.roles)
            if started[i] or need & held or not all(done[d] for d in t.deps):
                continue
            wants = AWAKE.get(t.stage)
            if layout.colocate and wants is not None and wants != awake:
                remaining[i] += layout.switch_s
                switch_total += layout.switch_s
                awake = wants
            started[i], t.start = True, now
            held |= need
            running.append(i)
        if not running:
            raise RuntimeError("simulate: no task can run (a dependency cycle in the round's task graph)")
        speed = layout.speed(sum(layout.demand(tasks[i].roles) for i in running))
        dt = min(remaining[i] for i in running) / speed
        now += dt
        for i in list(running):
            remaining[i] -= dt * speed
            for r in tasks[i].roles:
                busy[r] += dt
            if remaining[i] <= EPS * max(1.0, tasks[i].seconds):
                done[i], tasks[i].end = True, now
                running.remove(i)
                held -= _resources(layout, tasks[i].roles)
    stage_s: dict[str, float] = {}
    for t in tasks:
        stage_s[t.stage] = stage_s.get(t.stage, 0.0) + (t.end - t.start)
    return RoundResult(now, stage_s, busy, switch_total, tasks)


def simulate_round(work: RoundWorkload, layout: Layout, rates: StageRates, schedule: Schedule) -> RoundResult:
    """Predict one round: its wall time, the time per stage and how busy each role is."""
    return run_tasks(build_tasks(work, layout, rates, schedule), layout)
