"""PNG plots drawn from metrics.jsonl events (matplotlib Figure on an Agg canvas; no pyplot state).

Every plot function returns the path it wrote, or None (and writes nothing) when the events hold
no data for it. Resumed runs repeat steps / iterations: the last value for each x wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from apo_pipeline.monitoring.stages import STAGES

Event = dict[str, Any]
Line = tuple[str, list[float], list[float], str]  # (label, xs, ys, linestyle)
Panel = tuple[str, list[Line]]  # (y label, lines)
ROUND_KEYS = ("iteration", "segment")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def round_key(events: Sequence[Event]) -> str | None:
    """'iteration' if any event carries it, else 'segment', else None."""
    return next((k for k in ROUND_KEYS if any(k in e for e in events)), None)


def series(
    events: Sequence[Event], event: str, x_key: str, y_key: str, where: Mapping[str, Any] | None = None
) -> tuple[list[float], list[float]]:
    """(xs, ys) sorted by x: the last numeric `y_key` per `x_key` among events named `event` (and
    whose fields match `where`, e.g. {"policy": "hat"})."""
    points: dict[float, float] = {}
    for e in events:
        if e.get("event") == event and _number(e.get(x_key)) and _number(e.get(y_key)):
            if all(e.get(k) == v for k, v in (where or {}).items()):
                points[e[x_key]] = e[y_key]
    xs = sorted(points)
    return xs, [points[x] for x in xs]


def eval_policies(events: Sequence[Event]) -> list[str | None]:
    """The `policy` names of the eval events (APO: "extrapolated", "hat"), or [None] when unnamed."""
    names = sorted({e["policy"] for e in events if e.get("event") == "eval" and isinstance(e.get("policy"), str)})
    return list(names) or [None]


def round_means(events: Sequence[Event], key: str) -> dict[int, float]:
    """{round: mean of `key` over that round's optimizer steps} from the train events (the last event
    of a step wins, as after a resume); the round is the event's iteration or segment."""
    rounds = {k for k in ROUND_KEYS if any(e.get("event") == "train" and k in e for e in events)}
    by_step: dict[float, tuple[int, float]] = {}
    for e in events:
        rnd = next((e[k] for k in ROUND_KEYS if k in rounds and _number(e.get(k))), None)
        if e.get("event") == "train" and _number(e.get("step")) and _number(e.get(key)) and rnd is not None:
            by_step[e["step"]] = (int(rnd), float(e[key]))
    table: dict[int, list[float]] = {}
    for rnd, value in by_step.values():
        table.setdefault(rnd, []).append(value)
    return {rnd: sum(vs) / len(vs) for rnd, vs in sorted(table.items())}


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def line_panels(path: Path, panels: Sequence[Panel], xlabel: str, title: str) -> Path | None:
    """One subplot per panel that has data, lines with legends; None if no panel has data."""
    panels = [(ylabel, [ln for ln in lines if ln[1]]) for ylabel, lines in panels]
    panels = [(ylabel, lines) for ylabel, lines in panels if lines]
    if not panels:
        return None
    fig = Figure(figsize=(7.0, 2.8 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (ylabel, lines) in zip(axes, panels):
        for label, xs, ys, style in lines:
            ax.plot(xs, ys, linestyle=style, marker="o" if len(xs) <= 30 else None, markersize=3, label=label)
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[-1].set_xlabel(xlabel)
    fig.suptitle(title)
    return _save(fig, path)


def plot_eval(events: Sequence[Event], path: Path) -> Path | None:
    """Held-out reward and win-rate vs the starting policy per iteration (greedy dashed when logged);
    one line per evaluated policy when the events name them (APO: extrapolated and hat)."""
    x = "iteration" if any(e.get("event") == "eval" and "iteration" in e for e in events) else "segment"
    policies = eval_policies(events)

    def lines(specs: Sequence[tuple[str, str, str]]) -> list[Line]:
        return [(name if policy is None else f"{policy} {name}",
                 *series(events, "eval", x, key, None if policy is None else {"policy": policy}), style)
                for policy in policies for key, name, style in specs]

    panels = [
        ("mean latent reward", lines([("reward_mean", "sampled", "-"), ("reward_greedy", "greedy", "--")])),
        ("win-rate vs start", lines([("win_rate", "sampled", "-"), ("win_rate_greedy", "greedy", "--")])),
    ]
    return line_panels(path, panels, x, "evaluation")


def plot_train(events: Sequence[Event], path: Path) -> Path | None:
    """Loss, margin and chosen / rejected implicit rewards per global step."""
    panels = [
        ("loss", [("loss", *series(events, "train", "step", "loss"), "-")]),
        ("margin", [("margin", *series(events, "train", "step", "margin"), "-")]),
        ("implicit reward", [
            ("chosen", *series(events, "train", "step", "chosen_reward"), "-"),
            ("rejected", *series(events, "train", "step", "rejected_reward"), "-"),
        ]),
    ]
    return line_panels(path, panels, "step", "training")


def plot_dynamics(events: Sequence[Event], path: Path) -> Path | None:
    """The dynamics probe per step (train events' dyn_* fields, docs/algorithms.md): POS / NEG
    gradient norms; G = <grad L, grad NLL(D')> of TOT / POS / NEG (seed 003 Fig. 1 a, b) and of the
    TOP / MID / BOT weight terciles (Fig. 1 c); each tercile's share of the DPO loss."""
    def line(label: str, key: str) -> Line:
        return (label, *series(events, "train", "step", key), "-")

    terciles = ("top", "mid", "bot")
    panels = [
        ("gradient norm", [line("POS (positive learning)", "dyn_pos_norm"), line("NEG (negative learning)", "dyn_neg_norm")]),
        ("G vs D'", [line("TOT", "dyn_G_total"), line("POS", "dyn_G_pos"), line("NEG", "dyn_G_neg")]),
        ("G by weight tercile", [line(t.upper(), f"dyn_{t}_G_total") for t in terciles]),
        ("loss share", [line(t.upper(), f"dyn_{t}_loss_share") for t in terciles]),
    ]
    return line_panels(path, panels, "step", "gradient dynamics")


def stage_seconds(events: Sequence[Event]) -> dict[str, dict[str, float]]:
    """{round label: {stage: seconds}} summed over stage events; rounds without a number go to 'other'."""
    key = round_key([e for e in events if e.get("event") == "stage"])
    table: dict[str, dict[str, float]] = {}
    for e in events:
        if e.get("event") == "stage" and _number(e.get("seconds")) and isinstance(e.get("stage"), str):
            label = str(e[key]) if key and _number(e.get(key)) else "other"
            row = table.setdefault(label, {})
            row[e["stage"]] = row.get(e["stage"], 0.0) + e["seconds"]
    return dict(sorted(table.items(), key=lambda kv: (kv[0] == "other", float(kv[0]) if kv[0] != "other" else 0)))


def plot_stages(events: Sequence[Event], path: Path) -> Path | None:
    """Stacked bars: seconds per stage for each iteration / segment."""
    table = stage_seconds(events)
    if not table:
        return None
    stages = [s for s in STAGES if any(s in row for row in table.values())]
    stages += sorted({s for row in table.values() for s in row} - set(stages))
    labels = list(table)
    fig = Figure(figsize=(max(7.0, 0.5 * len(labels) + 4), 4.0), layout="constrained")
    ax = fig.subplots()
    bottom = [0.0] * len(labels)
    for stage in stages:
        heights = [table[label].get(stage, 0.0) for label in labels]
        ax.bar(labels, heights, bottom=bottom, label=stage)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xlabel(round_key([e for e in events if e.get("event") == "stage"]) or "round")
    ax.set_ylabel("seconds")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("time by stage")
    return _save(fig, path)


def plot_overlay(
    runs: Mapping[str, Sequence[Event]], event: str, x_key: str, y_key: str, path: Path, title: str
) -> Path | None:
    """One line per run (legend = run name) of `y_key` against `x_key` for `event` events."""
    lines = [(name, *series(events, event, x_key, y_key), "-") for name, events in runs.items()]
    return line_panels(path, [(y_key, lines)], x_key, title)
