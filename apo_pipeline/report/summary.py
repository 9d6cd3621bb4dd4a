"""`write_report` (one run: PNGs + report.md) and `write_comparison` (several runs overlaid)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from apo_pipeline.monitoring.metrics import read_metrics
from apo_pipeline.report.plots import (
    Event,
    eval_policies,
    plot_dynamics,
    plot_eval,
    plot_overlay,
    plot_stages,
    plot_train,
    round_means,
    series,
    stage_seconds,
)
from apo_pipeline.report.samples import sample_lines

log = logging.getLogger(__name__)

REPORT_PLOTS = {
    "eval.png": (plot_eval, "reward and win-rate per iteration"),
    "train.png": (plot_train, "loss and margins per step"),
    "stages.png": (plot_stages, "time by stage"),
    "dynamics.png": (plot_dynamics, "POS / NEG gradient norms, G against D', loss share by weight tercile"),
}
ROUND_MEANS = (("mc_entropy", "MC kernel entropy (nats)"), ("loss", "loss"), ("chosen_reward", "chosen reward"),
               ("dyn_G_total", "G (TOT)"), ("dyn_top_loss_share", "TOP loss share"))
CONFIG_HIGHLIGHTS = (
    "job", "name", "seed", "model.path", "algorithm.loss", "algorithm.beta", "algorithm.negatives",
    "algorithm.num_negatives", "generation.temperatures", "generation.n_per_temperature", "learner.lr",
    "learner.zero_stage", "cluster.use_gpu", "cluster.num_engines", "cluster.learner_ranks", "loop",
)


def _load_events(run_dir: Path) -> list[Event]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {run_dir} a run directory?")
    return read_metrics(path)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows),
    ]


def _result_rows(events: Sequence[Event]) -> list[tuple[str, Any, Any]]:
    """(metric, initial, final) for eval metrics and the training loss, where logged."""
    rows = []
    for policy in eval_policies(events):
        where, suffix = (None, "") if policy is None else ({"policy": policy}, f", {policy}")
        for key, label in (("reward_mean", "mean reward (sampled"), ("win_rate", "win-rate vs start (sampled"),
                           ("reward_greedy", "mean reward (greedy"), ("win_rate_greedy", "win-rate vs start (greedy")):
            _, ys = series(events, "eval", "iteration", key, where)
            if ys:
                rows.append((f"{label}{suffix})", ys[0], ys[-1]))
    steps, losses = series(events, "train", "step", "loss")
    if losses:
        rows.append(("train loss", losses[0], losses[-1]))
        rows.append(("train steps", "", int(steps[-1])))
    return rows


def _stage_totals(events: Sequence[Event]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for row in stage_seconds(events).values():
        for stage, seconds in row.items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    return totals


def _config_rows(config_path: Path) -> list[tuple[str, Any]]:
    if not config_path.is_file():
        return []
    try:
        tree = yaml.safe_load(config_path.read_text()) or {}
    except yaml.YAMLError as exc:
        log.warning("%s: unreadable (%s); config left out of the report", config_path, exc)
        return []
    rows = []
    for dotted in CONFIG_HIGHLIGHTS:
        node: Any = tree
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            rows += [(f"{dotted}.{k}", v) for k, v in node.items()]
        elif node is not None:
            rows.append((dotted, node))
    return rows


def _markdown(run_dir: Path, events: Sequence[Event], plots: dict[str, Path]) -> str:
    lines = [f"# Run report: {run_dir.name}", ""]
    if results := _result_rows(events):
        lines += ["## Results", "", *_table(("metric", "initial", "final"), results), ""]
    means = {label: round_means(events, key) for key, label in ROUND_MEANS}
    means = {label: values for label, values in means.items() if values}
    if means:
        rounds = sorted({r for values in means.values() for r in values})
        rows = [(r, *(values.get(r, "-") for values in means.values())) for r in rounds]
        lines += ["## Training per round (means over the round's steps)", "",
                  *_table(("round", *means), rows), ""]
    if totals := _stage_totals(events):
        total = sum(totals.values())
        rows = [(s, f"{t:.1f}", f"{100 * t / total:.1f}%" if total else "-") for s, t in totals.items()]
        rows.append(("**total**", f"{total:.1f}", "100%"))
        lines += ["## Time by stage", "", *_table(("stage", "seconds", "share"), rows), ""]
    if samples := sample_lines(run_dir):
        lines += samples
    if config := _config_rows(run_dir / "config.yaml"):
        lines += ["## Config highlights", "", *_table(("key", "value"), config), ""]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{REPORT_PLOTS[name][1]}]({name})" for name in plots]
        lines.append("")
    return "\n".join(lines)


def write_report(run_dir: str | Path) -> list[Path]:
    """Write PNG plots and report.md into `<run_dir>/report/`; return the files written.

    Plots without data are skipped (and a stale PNG of the same name is removed).
    """
    run_dir = Path(run_dir)
    events = _load_events(run_dir)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    plots = {}
    for name, (plot, _) in REPORT_PLOTS.items():
        path = plot(events, out / name)
        if path is None:
            (out / name).unlink(missing_ok=True)
        else:
            plots[name] = path
    md = out / "report.md"
    md.write_text(_markdown(run_dir, events, plots))
    return [*plots.values(), md]


def _run_names(run_dirs: Sequence[Path]) -> list[str]:
    """Directory names, or parent/name where two runs share a name."""
    names = [p.name for p in run_dirs]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in run_dirs]


def write_comparison(run_dirs: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """Overlay several runs (reward and win-rate per iteration, loss per step; legend = run names).

    Writes PNGs and comparison.md (final results per run) into `out_dir`; returns the files written.
    """
    paths = [Path(p) for p in run_dirs]
    if not paths:
        raise ValueError("run_dirs: give at least one run directory")
    runs = {name: _load_events(p) for name, p in zip(_run_names(paths), paths)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    overlays = (
        ("reward.png", "eval", "iteration", "reward_mean", "held-out mean reward"),
        ("win_rate.png", "eval", "iteration", "win_rate", "win-rate vs starting policy"),
        ("loss.png", "train", "step", "loss", "training loss"),
    )
    written = [
        path for name, event, x, y, title in overlays
        if (path := plot_overlay(runs, event, x, y, out / name, title)) is not None
    ]
    rows = []
    for name, events in runs.items():
        results = {label: final for label, _, final in _result_rows(events)}
        rows.append((name, results.get("mean reward (sampled)", "-"), results.get("win-rate vs start (sampled)", "-"),
                     f"{sum(_stage_totals(events).values()):.1f}"))
    md = out / "comparison.md"
    md.write_text("\n".join([
        "# Run comparison", "",
        *_table(("run", "final reward", "final win-rate", "seconds"), rows), "",
        *(f"![{p.stem}]({p.name})" for p in written), "",
    ]))
    return [*written, md]
