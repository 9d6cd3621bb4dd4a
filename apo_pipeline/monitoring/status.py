"""`apo-pipeline status RUN_DIR`: where a run stands, from its files alone (no Ray).

States: `running` (the driver's heartbeat is fresh, see `run_state`), `finished`, `failed` (the
driver recorded the error), `stopped` (interrupted, or the driver died without writing anything:
its heartbeat went stale), `not started` (no driver record and no metrics). Besides: the last
checkpoint and its step, rounds done of the config's total, optimizer steps logged, the
evaluation trend and the actor failures of `failures.jsonl`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from apo_pipeline.monitoring.metrics import read_metrics
from apo_pipeline.monitoring.run_state import driver_alive, read_driver_record
from apo_pipeline.storage.rundir import RunDir

ROUNDS_KEY = {"onmcpo": ("segment", "segments"), "apo": ("iteration", "iterations"), "mcpo": ("iteration", "epochs")}
EVAL_FIELDS = ("reward_mean", "reward_greedy", "win_rate", "win_rate_greedy")
TREND_SHOWN = 6


def _checkpoint(run: RunDir) -> dict[str, Any] | None:
    """LATEST's name and its loop state's step / rounds (read as plain JSON)."""
    if not run.latest_path.is_file():
        return None
    name = run.latest_path.read_text().strip()
    info: dict[str, Any] = {"name": name}
    try:
        state = json.loads((run.checkpoints_dir / name / "loop_state.json").read_text())
        info.update(step=state.get("step"), round_steps=state.get("round_steps"),
                    rounds=max(state.get("segment", 0), state.get("iteration", 0)))
    except (OSError, ValueError):
        pass
    return info


def _failures(run: RunDir) -> list[dict[str, Any]]:
    if not run.failures_path.is_file():
        return []
    out = []
    for line in run.failures_path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _state(run: RunDir, driver: dict[str, Any] | None, has_metrics: bool) -> tuple[str, str | None]:
    if driver is None:
        if run.final_dir.is_dir():
            return "finished", "no driver record (a run of an older version)"
        return ("stopped", "no driver record") if has_metrics else ("not started", None)
    if driver.get("state") == "running":
        if driver_alive(driver):
            return "running", None
        age = time.time() - float(driver.get("heartbeat", 0.0))
        return "stopped", f"the driver (pid {driver.get('pid')}) ended without a word; last heartbeat {age:.0f} s ago"
    return str(driver.get("state")), driver.get("error")


def run_status(run_dir: str | Path) -> dict[str, Any]:
    """Everything `status` shows, as plain JSON-able data. FileNotFoundError if `run_dir` is not a directory."""
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    config = yaml.safe_load(run.config_path.read_text()) if run.config_path.is_file() else {}
    events = read_metrics(run.metrics_path) if run.metrics_path.is_file() else []
    driver = read_driver_record(run)
    state, reason = _state(run, driver, bool(events))
    job = config.get("job")
    unit, total_key = ROUNDS_KEY.get(job, ("round", ""))
    evals = [{"index": e.get("segment", e.get("iteration")), **{k: e[k] for k in EVAL_FIELDS if k in e}}
             for e in events if e["event"] == "eval"]
    train = [e for e in events if e["event"] == "train"]
    stages = [e for e in events if e["event"] == "stage"]
    return {
        "run_dir": str(run.root), "job": job, "state": state, "reason": reason,
        "driver": None if driver is None else {
            k: driver.get(k) for k in ("pid", "host", "started", "heartbeat", "ended")},
        "checkpoint": _checkpoint(run), "unit": unit,
        "rounds_total": (config.get("loop") or {}).get(total_key),
        "steps": train[-1]["step"] + 1 if train else 0,
        "last_stage": stages[-1].get("stage") if stages else None,
        "evals": evals, "failures": _failures(run),
    }


def _ago(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _trend(values: list[float | None]) -> str:
    shown = [("n/a" if v is None else f"{v:.3f}") for v in values]
    if len(shown) > TREND_SHOWN:
        shown = [*shown[:2], "...", *shown[-(TREND_SHOWN - 3):]]
    return " -> ".join(shown)


def _row(label: str, text: str) -> str:
    return f"  {label:<16}{text}"


def format_status(st: dict[str, Any], now: float | None = None) -> str:
    """A few lines for a terminal."""
    now = time.time() if now is None else now
    head = f"{st['run_dir']}: {st['state']}"
    drv = st["driver"]
    if st["state"] == "running" and drv:
        head += f" (pid {drv['pid']} on {drv['host']}, started {_ago(now - drv['started'])} ago, heartbeat {_ago(now - drv['heartbeat'])} ago)"
    elif drv and drv.get("ended"):
        head += f" ({_ago(now - drv['ended'])} ago, after {_ago(drv['ended'] - drv['started'])})"
    if st["reason"]:
        head += f": {st['reason']}"
    lines = [head]
    ck = st["checkpoint"]
    total = f"/{st['rounds_total']}" if st["rounds_total"] else ""
    done = ck.get("rounds", 0) if ck else 0
    progress = f"{st['unit']} {done}{total} done, {st['steps']} optimizer steps logged"
    progress += f"; last checkpoint {ck['name']} (next step {ck.get('step')})" if ck else "; no checkpoint yet"
    if st["state"] == "running" and st["last_stage"]:
        progress += f"; last stage {st['last_stage']}"
    lines.append(_row("progress", progress))
    if st["evals"]:
        for key, label in (("reward_mean", "reward"), ("reward_greedy", "reward greedy"),
                           ("win_rate", "win-rate"), ("win_rate_greedy", "win-rate greedy")):
            values = [e.get(key) for e in st["evals"]]
            if any(v is not None for v in values):
                lines.append(_row(label, _trend(values)))
    else:
        lines.append(_row("eval", "none yet"))
    fails = st["failures"]
    if fails:
        last = fails[-1]
        message = str(last.get("message") or "").strip()
        first = message.splitlines()[0][:160] if message else ""
        lines.append(_row("failures", f"{len(fails)} in failures.jsonl; last (attempt {last.get('attempt')}): "
                                      f"{last.get('error')}: {first}"))
    else:
        lines.append(_row("failures", "none"))
    return "\n".join(lines)
