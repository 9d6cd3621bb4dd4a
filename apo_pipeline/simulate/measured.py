"""Measured rounds: a run directory's stage events (metrics.jsonl) and sizes, and rates fitted to them.

A round's wall time runs from the end of the previous round's last stage event (for the first
round: the end of the starting evaluation, or its own first stage's start) to the end of its
last one, so the rounds' wall times add up to the loop's. What no stage event covers (building
groups, writing tables, logging) is the `driver` stage: wall - sum of the stage times.
Actor counts come from the run's `actors` event (the actors that really ran), sizes from its
`data` / `judge` / `train` events, so a round's workload is what it did, not what was asked.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from apo_pipeline.simulate.events import STAGE_ROLES, RoundResult
from apo_pipeline.simulate.rates import STAGES, Sample, StageRates, fit_cost
from apo_pipeline.simulate.workload import ROLES, Layout, RoundWorkload, job_kind, layout_from_config

FIRST_STEADY_ROUND = 2  # round 1 pays one-time warm-ups (the first weight sync, first compilations)


@dataclass(frozen=True)
class MeasuredRound:
    """One round of a run: its measured wall and stage seconds, and its sizes as a workload."""

    index: int
    wall_s: float
    stage_s: dict[str, float]
    samples: dict[str, Sample]
    workload: RoundWorkload


@dataclass(frozen=True)
class MeasuredRun:
    """A run directory read back: its config (a mapping), the actors that ran, its rounds."""

    path: Path
    config: dict[str, Any]
    layout: Layout
    rounds: list[MeasuredRound]

    def steady(self, first: int = FIRST_STEADY_ROUND) -> list[MeasuredRound]:
        """Rounds from `first` on (all rounds when the run has fewer)."""
        return [r for r in self.rounds if r.index >= first] or self.rounds


def _read_events(path: Path) -> list[dict[str, Any]]:
    events = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not a JSON line ({exc.msg})") from exc
    return events


def _layout(cfg: dict[str, Any], events: list[dict[str, Any]], cores: float | None) -> Layout:
    """The config's layout with the actor counts of the last `actors` event (what really ran)."""
    base = layout_from_config(cfg, judge_pool=True, cores=cores)
    actors = [e for e in events if e.get("event") == "actors"]
    if not actors:
        return base
    names = actors[-1]
    count = {p: sum(1 for k in names if k.startswith(p)) for p in ("gen-", "judge-", "learner-")}
    judges = max(1, count["judge-"])
    return Layout(
        engines=count["gen-"] or base.engines, engine_tp=base.engine_tp, judges=judges,
        judges_reserved=max(judges, base.judges_reserved), judge_tp=base.judge_tp,
        learner_ranks=count["learner-"] or base.learner_ranks, colocate=base.colocate, switch_s=base.switch_s,
        cores=cores, role_cores=base.role_cores,
    )


def read_run(run_dir: str | Path, cores: float | None = None) -> MeasuredRun:
    """Read `run_dir`'s config.yaml and metrics.jsonl into measured rounds (index >= 1).

    `cores`: the CPU cores the run's actors shared (kept in the layout for predictions)."""
    root = Path(run_dir)
    for name in ("config.yaml", "metrics.jsonl"):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name}: missing; --run needs a run directory written by a job")
    cfg = yaml.safe_load((root / "config.yaml").read_text()) or {}
    kind = job_kind(cfg)
    if kind == "mcpo":
        raise ValueError(f"{root}: offline MC-PO has no online rounds to simulate")
    unit = "segment" if kind == "onmcpo" else "iteration"
    events = _read_events(root / "metrics.jsonl")
    layout = _layout(cfg, events, cores)
    gen = cfg.get("generation") or {}
    k = len(gen.get("temperatures") or [0.6, 0.8, 1.0]) * int(gen.get("n_per_temperature") or 2)
    per_group = k if kind == "onmcpo" else 2
    eval_prompts = int((cfg.get("data") or {}).get("num_eval_prompts") or 32)

    by_round: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if isinstance(e.get(unit), int):
            by_round[e[unit]].append(e)
    rounds, prev_end = [], _stage_end(by_round.get(0, []))
    for index in sorted(i for i in by_round if i >= 1):
        evs = by_round[index]
        stages = [e for e in evs if e.get("event") == "stage" and e.get("stage") in STAGES]
        if not any(e["stage"] == "generate" for e in stages):
            continue  # a round whose data was reused from a checkpoint: nothing to measure
        start = prev_end if prev_end is not None else min(e["time"] - e["seconds"] for e in stages)
        prev_end = _stage_end(evs)
        rounds.append(_round(index, evs, stages, prev_end - start, layout, k, per_group, eval_prompts))
    if not rounds:
        raise ValueError(f"{root / 'metrics.jsonl'}: no complete {unit} with stage events")
    return MeasuredRun(root, cfg, layout, rounds)


def _stage_end(events: Iterable[dict[str, Any]]) -> float | None:
    times = [e["time"] for e in events if e.get("event") == "stage"]
    return max(times) if times else None


def _round(index: int, evs: list[dict[str, Any]], stages: list[dict[str, Any]], wall: float, layout: Layout,
           k: int, per_group: int, eval_prompts: int) -> MeasuredRound:
    seconds: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    pairs: dict[str, float] = defaultdict(float)
    for e in stages:
        seconds[e["stage"]] += e["seconds"]
        calls[e["stage"]] += 1
        pairs[e["stage"]] += e.get("pairs", 0)
    data = [e for e in evs if e.get("event") == "data" and "prompts" in e]
    prompts = sum(e["prompts"] for e in data) if data else 0
    asked = sum(e.get("asked", 0) for e in evs if e.get("event") == "judge")
    steps = sum(1 for e in evs if e.get("event") == "train")
    work = RoundWorkload(
        prompts=max(prompts, 1), candidates=prompts * k, judge_requests=asked,
        ref_sequences=int(pairs["ref_logprobs"]) * per_group, steps=steps,
        batch=pairs["train"] / steps if steps else 1.0, eval_prompts=eval_prompts if calls["eval"] else 0,
        checkpoint=calls["checkpoint"] > 0,
    )
    units = {
        "generate": work.candidates / layout.engines, "judge": asked / layout.judges,
        "ref_logprobs": work.ref_sequences / layout.learner_ranks, "train": pairs["train"] / layout.learner_ranks,
        "eval": calls["eval"] * eval_prompts / layout.engines, "driver": float(prompts),
    }
    calls["train"] = steps
    seconds["driver"] = max(wall - sum(seconds.values()), 0.0)
    calls["driver"] = 1
    # a stage ran alone, at the speed its own demand for the shared cores allows: work = time x speed
    speed = {s: layout.speed(layout.demand(STAGE_ROLES[s])) for s in STAGES}
    samples = {s: Sample(calls[s] / speed[s], units.get(s, 0.0) / speed[s], seconds[s]) for s in STAGES if calls[s]}
    return MeasuredRound(index, wall, dict(seconds), samples, work)


def fit_rates(runs: Sequence[MeasuredRun], first_round: int = FIRST_STEADY_ROUND) -> StageRates:
    """Per-stage costs fitted (non-negative least squares) over the steady rounds of `runs`."""
    if not runs:
        raise ValueError("fit_rates: no runs")
    samples: dict[str, list[Sample]] = defaultdict(list)
    for run in runs:
        for rnd in run.steady(first_round):
            for stage, sample in rnd.samples.items():
                samples[stage].append(sample)
    costs = {stage: fit_cost(s) for stage, s in samples.items()}
    names = ", ".join("/".join(r.path.parts[-2:]) for r in runs)
    return StageRates(costs, source=f"measured: {names} (rounds >= {first_round})")


def mean_wall(rounds: Sequence[MeasuredRound]) -> float:
    """Mean wall seconds of `rounds`."""
    return math.fsum(r.wall_s for r in rounds) / len(rounds)


def measured_result(rounds: Sequence[MeasuredRound]) -> RoundResult:
    """The mean of measured rounds as a result (busy time per role from the stages' roles; the
    stages ran one after another, so no timeline)."""
    n = len(rounds)
    stage_s: dict[str, float] = defaultdict(float)
    for r in rounds:
        for stage, seconds in r.stage_s.items():
            stage_s[stage] += seconds / n
    busy = dict.fromkeys(ROLES, 0.0)
    for stage, seconds in stage_s.items():
        for role in STAGE_ROLES[stage]:
            busy[role] += seconds
    return RoundResult(mean_wall(rounds), dict(stage_s), busy, 0.0)
