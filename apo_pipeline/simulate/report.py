"""Tables of simulated rounds: wall time, time per stage, busy fraction and GPU utilization per role."""

from __future__ import annotations

from typing import Sequence

from apo_pipeline.simulate.events import RoundResult
from apo_pipeline.simulate.workload import Layout, RoundWorkload

SHOWN_STAGES = ("generate", "judge", "ref_logprobs", "train", "sync", "eval", "checkpoint", "driver")
GPU_ROLES = ("generation", "judge", "learner")
UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0}


def gpu_groups(layout: Layout) -> dict[str, tuple[str, ...]]:
    """GPU groups by name -> the roles working on them (colocated: one group for both policy roles)."""
    if layout.colocate:
        return {"learner+generation": ("learner", "generation"), "judge": ("judge",)}
    return {role: (role,) for role in GPU_ROLES}


def gpu_utilization(result: RoundResult, layout: Layout) -> dict[str, float]:
    """Per GPU group: working GPU-seconds / (wall x reserved GPUs); plus "all". A judge that does
    not run (no judge pool) leaves its GPUs idle."""
    groups = gpu_groups(layout)
    working = dict.fromkeys(groups, 0.0)
    for task in result.tasks:
        for name, roles in groups.items():
            gpus = sum(layout.busy_gpus(r) for r in task.roles if r in roles)
            reserved = sum(layout.gpus(r) for r in roles)
            working[name] += (task.end - task.start) * min(gpus, reserved)
    out = {}
    for name, roles in groups.items():
        reserved = sum(layout.gpus(r) for r in roles)
        out[name] = working[name] / (result.wall_s * reserved) if reserved and result.wall_s > 0 else 0.0
    total = layout.total_gpus
    out["all"] = sum(working.values()) / (result.wall_s * total) if total and result.wall_s > 0 else 0.0
    return out


def describe(work: RoundWorkload, layout: Layout, gpus: bool = False) -> list[str]:
    """Two lines: the round's sizes and the actors (with their GPU count when `gpus`)."""
    cores = f", {layout.cores:g} shared CPU cores" if layout.cores else ""
    total = f", {layout.total_gpus} GPUs" if gpus else ""
    return [
        f"round: {work.prompts} prompts, {work.candidates} candidates, {work.judge_requests} judge comparisons, "
        f"{work.ref_sequences} reference sequences, {work.steps} steps of {work.batch:g} pairs, "
        f"evaluation of {work.eval_prompts} prompts" + (", checkpoint" if work.checkpoint else ""),
        f"actors: {layout.engines} generation engine(s) x TP {layout.engine_tp}, {layout.judges} of "
        f"{layout.judges_reserved} judge(s) running x TP {layout.judge_tp}, {layout.learner_ranks} learner rank(s)"
        + (", colocated" if layout.colocate else "") + cores + total,
    ]


def round_table(rows: Sequence[tuple[str, RoundResult, Layout]], unit: str = "s", gpus: bool = False) -> list[str]:
    """A Markdown table, one row per (label, result, layout): wall, stage times (eval with the
    judge's share), overlap, then the busy fraction of each role (or, with `gpus`, the GPU
    utilization of each GPU group)."""
    scale = UNITS[unit]
    shown = [{**r.stage_s, "eval": r.stage_s.get("eval", 0.0) + r.stage_s.get("eval_judge", 0.0)} for _, r, _ in rows]
    stages = [s for s in SHOWN_STAGES if any(st.get(s, 0.0) > 0 for st in shown)]
    groups = list(gpu_groups(rows[0][2])) + ["all"] if gpus else list(GPU_ROLES)
    head = ["", f"wall ({unit})", *stages, "overlap", *((f"GPU util {g}" for g in groups) if gpus else
                                                       (f"busy {g}" for g in groups))]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for (label, res, layout), stage_s in zip(rows, shown):
        shares = gpu_utilization(res, layout) if gpus else {g: res.busy_fraction(g) for g in groups}
        cells = [label, _num(res.wall_s / scale), *(_num(stage_s.get(s, 0.0) / scale) for s in stages),
                 f"{res.overlap:.2f}", *(f"{shares[g]:.0%}" for g in groups)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
