"""The simulated tables of docs/scaling.md: `python -m apo_pipeline.simulate.doc_tables` prints them
(a test checks that the page holds exactly these lines)."""

from __future__ import annotations

from apo_pipeline.simulate.presets import run_preset, scenarios
from apo_pipeline.simulate.report import gpu_utilization

DOC_LAYOUTS = {"gpu8": "8 GPUs, colocated", "gpu16": "16 GPUs", "gpu64": "64 GPUs"}
SCENARIO_NAMES = {"before": "before", "pool": "judge pool", "after": "after"}
HOUR = 3600.0


def segment_table(rounds_per_run: int = 3) -> list[str]:
    """Hours per segment and per run, overlap and GPU utilization per group, per layout and scenario."""
    lines = ["| layout | | h / segment | h / run | overlap | generation GPUs | judge GPUs | learner GPUs | all GPUs |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, title in DOC_LAYOUTS.items():
        for i, sc in enumerate(scenarios()):
            run = run_preset(name, sc)
            util = gpu_utilization(run.result, run.layout)
            if run.layout.colocate:
                shared = f"{util['learner+generation']:.0%} (shared)"
                gen = learner = shared
            else:
                gen, learner = f"{util['generation']:.0%}", f"{util['learner']:.0%}"
            hours = f"{run.result.wall_s / HOUR:.2f}"
            cells = [f"{title} (`{name}`)" if i == 0 else "", SCENARIO_NAMES[sc.name],
                     f"**{hours}**" if sc.name == "after" else hours, f"{rounds_per_run * run.result.wall_s / HOUR:.1f}",
                     f"{run.result.overlap:.2f}", gen, f"{util['judge']:.0%}", learner, f"{util['all']:.0%}"]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def stage_table() -> list[str]:
    """Hours per stage and segment, per layout (judge and evaluation: one judge / the pool)."""
    lines = ["| layout | generate | judge | reference pass | train | evaluation | checkpoint, sync, driver |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, title in DOC_LAYOUTS.items():
        before, pool = (run_preset(name, sc).result.stage_s for sc in scenarios()[:2])

        def h(stage_s: dict[str, float], *stages: str) -> str:
            return f"{sum(stage_s.get(s, 0.0) for s in stages) / HOUR:.2f}"

        def both(*stages: str) -> str:
            one, many = h(before, *stages), h(pool, *stages)
            return one if one == many else f"{one} / {many}"

        lines.append("| " + " | ".join([
            title.split(",")[0], h(before, "generate"), both("judge"), h(before, "ref_logprobs"), h(before, "train"),
            both("eval", "eval_judge"), h(before, "checkpoint", "sync", "driver")]) + " |")
    return lines


if __name__ == "__main__":
    print("\n".join(segment_table()))
    print()
    print("\n".join(stage_table()))
