"""The quiet console (`monitoring.console: quiet`): what the terminal shows while a job runs.

One live progress line per stage and one line per evaluation; library output goes to the run's
log files instead (`monitoring.actor_logs`).

    [segment 2/3] train  24/50 steps  18.4 pairs/s  loss 0.621  ETA 0:41
    [segment 2/3] generate  1,320 tokens  2,410 tokens/s  in 0.5 s
    eval segment 2/3  reward 0.661 (greedy 0.793)  win-rate vs start 0.58 (greedy 0.71)

On a terminal the progress line is one line rewritten in place, refreshed every second.
Elsewhere (a pipe, a `ray job submit` log) each stage ends with one plain line, and a stage that
runs longer than PLAIN_EVERY_S adds a line every PLAIN_EVERY_S. ETA: the remaining items at the
rate so far; for a stage without item counts, the time the same stage took last round minus the
time spent so far.

One console is active per process (`activate`): `monitoring.stages.progress` and `StageTimer`
draw on it, and it is a `Tracker` of the run's `MetricsLogger` (eval, train, fault and resume
events).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar

PLAIN_EVERY_S = 30.0
REFRESH_S = 1.0
ROUND_KEYS = ("segment", "iteration")
T = TypeVar("T")


def clock(seconds: float) -> str:
    """`0:41`, `12:03`, `1:02:03`."""
    s = int(round(max(seconds, 0.0)))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


@dataclass
class _Live:
    """One progress line: its label, when it started, and what is known of its progress."""

    label: str
    stage: str | None
    started: float
    done: int | None = None
    total: int | None = None
    unit: str = ""
    rate: str = ""
    extra: str = ""
    expected_s: float | None = None  # the same stage's duration last round (ETA without item counts)

    def text(self, now: float) -> str:
        elapsed = now - self.started
        parts = [self.label]
        if self.total:
            parts.append(f"{self.done or 0}/{self.total} {self.unit}")
        parts += [p for p in (self.rate, self.extra) if p]
        if self.total and self.done:
            parts.append(f"ETA {clock(elapsed / self.done * (self.total - self.done))}")
        elif self.expected_s is not None and self.expected_s > elapsed:
            parts.append(f"{clock(elapsed)}  ETA ~{clock(self.expected_s - elapsed)}")
        else:
            parts.append(clock(elapsed))
        return "  ".join(parts)


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def eval_summary(record: dict[str, Any], where: str) -> str:
    """`eval segment 2/3  reward 0.661 (greedy 0.793)  win-rate vs start 0.58 (greedy 0.71)`; APO's
    evaluations name their policy after the place: `eval iteration 1/2  hat  reward ...`."""
    parts = [f"eval {where}"] + ([record["policy"]] if isinstance(record.get("policy"), str) else [])
    if "reward_mean" in record:
        greedy = f" (greedy {_fmt(record['reward_greedy'])})" if "reward_greedy" in record else ""
        parts.append(f"reward {_fmt(record['reward_mean'])}{greedy}")
    if "win_rate" in record:
        greedy = f" (greedy {_fmt(record['win_rate_greedy'], 2)})" if "win_rate_greedy" in record else ""
        parts.append(f"win-rate vs start {_fmt(record['win_rate'], 2)}{greedy}")
    return "  ".join(parts)


def stage_result(record: dict[str, Any]) -> str:
    """What a finished stage did: `1,320 tokens  2,410 tokens/s  in 0.5 s` (or its error)."""
    parts = []
    if "tokens" in record:
        parts.append(f"{record['tokens']:,} tokens")
    if "tokens_per_s" in record:
        parts.append(f"{record['tokens_per_s']:,.0f} tokens/s")
    if "pairs" in record:
        parts.append(f"{record['pairs']:,} pairs")
    if "pairs_per_s" in record:
        parts.append(f"{record['pairs_per_s']:.1f} pairs/s")
    parts.append(f"in {record['seconds']:.1f} s")
    if "error" in record:
        parts.append(f"failed ({record['error']})")
    return "  ".join(parts)


class Console:
    """Progress and summary lines on `stream` (a TTY: rewritten in place; else plain lines).

    `rounds`: segments / iterations / epochs of the job, shown as `segment 2/3`.
    """

    def __init__(self, stream: TextIO, *, tty: bool | None = None, rounds: int | None = None,
                 refresh_s: float = REFRESH_S, plain_every_s: float = PLAIN_EVERY_S) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.rounds = rounds
        self.plain_every_s = plain_every_s
        self._stack: list[_Live] = []
        self._waiting: _Live | None = None  # shown while nothing else is (`wait`)
        self._last_seconds: dict[str, float] = {}
        self._shown = False  # a live line is on the screen (TTY)
        self._last_plain = 0.0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, args=(refresh_s,), name="apo-console", daemon=True)
        self._ticker.start()

    # -- drawing ---------------------------------------------------------------------------------
    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _current(self) -> _Live | None:
        return self._stack[-1] if self._stack else self._waiting

    def _render(self) -> None:
        """Redraw the live line (TTY only)."""
        live = self._current()
        if live is None:
            return
        width = shutil.get_terminal_size((120, 20)).columns - 1
        self._write("\r" + live.text(time.monotonic())[:width] + "\x1b[K")
        self._shown = True

    def _plain(self, text: str) -> None:
        self._write(text + "\n")
        self._last_plain = time.monotonic()

    def line(self, text: str) -> None:
        """A permanent line (above the live line on a TTY)."""
        with self._lock:
            if self.tty and self._shown:
                self._write("\r\x1b[K")
                self._shown = False
            self._plain(text)
            if self.tty:
                self._render()

    def _tick(self, refresh_s: float) -> None:
        while not self._stop.wait(refresh_s):
            with self._lock:
                if self.tty:
                    self._render()
                elif self._current() and time.monotonic() - self._last_plain >= self.plain_every_s:
                    self._plain(self._current().text(time.monotonic()))

    # -- progress ----------------------------------------------------------------------------------
    def where(self, fields: dict[str, Any]) -> str:
        """`segment 2/3`, `start` for round 0, or '' without a round field."""
        key = next((k for k in ROUND_KEYS if k in fields), None)
        if key is None:
            return ""
        index = fields[key]
        if index == 0:
            return "start"
        return f"{key} {index}" + (f"/{self.rounds}" if self.rounds else "")

    def wait(self, label: str) -> None:
        """A line with a clock (`starting the actors  0:12`) shown until the next stage begins."""
        with self._lock:
            self._waiting = _Live(label, None, time.monotonic())
            if self.tty:
                self._render()
            else:
                self._plain(label)

    def begin(self, label: str, stage: str | None = None) -> None:
        """Show a new live line (stacked on the current one until `end`)."""
        with self._lock:
            self._waiting = None
            expected = self._last_seconds.get(stage) if stage else None
            self._stack.append(_Live(label, stage, time.monotonic(), expected_s=expected))
            if self.tty:
                self._render()

    def stage_started(self, stage: str, fields: dict[str, Any]) -> None:
        where = self.where(fields)
        label = f"[{where}] {stage}" if where else stage
        self.begin(label + (f" chunk {fields['chunk'] + 1}" if "chunk" in fields else ""), stage)

    def stage_ended(self, record: dict[str, Any]) -> None:
        """Close the current stage's line with what it did (a plain line off a TTY)."""
        with self._lock:
            if not self._stack:
                return
            # a streamed round's stages overlap: close the newest line of this stage, not the newest line
            mine = [i for i, entry in enumerate(self._stack) if entry.stage == record["stage"]]
            live = self._stack.pop(mine[-1] if mine else -1)
            self._last_seconds[record["stage"]] = record["seconds"]
            text = f"{live.label}  {stage_result(record)}"
            if self.tty:
                width = shutil.get_terminal_size((120, 20)).columns - 1
                self._write("\r" + text[:width] + "\x1b[K")
                self._shown = True
            else:
                self._plain(text)

    def end(self) -> None:
        """Drop the current live line (one `begin` without a stage)."""
        with self._lock:
            if self._stack:
                self._stack.pop()
            if self.tty and self._shown and not self._stack:
                self._write("\r\x1b[K")
                self._shown = False

    def advance(self, done: int, total: int | None, unit: str) -> None:
        with self._lock:
            if self._stack:
                live = self._stack[-1]
                live.done, live.total, live.unit = done, total, unit
                if live.stage is None and total:
                    elapsed = time.monotonic() - live.started
                    live.rate = f"{done / elapsed:.1f} {unit}/s" if elapsed > 0 else ""
                if self.tty:
                    self._render()

    def track(self, iterable: Iterable[T], desc: str, total: int | None, unit: str) -> Iterator[T]:
        """Yield the items, counting them on the current stage's line (or on a line of its own)."""
        own = not self._stack
        if own:
            self.begin(desc)
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        try:
            self.advance(0, total, unit)
            for done, item in enumerate(iterable, start=1):
                yield item
                self.advance(done, total, unit)
        finally:
            if own:
                if not self.tty:
                    with self._lock:
                        self._plain(self._stack[-1].text(time.monotonic()))
                self.end()

    # -- Tracker of MetricsLogger ------------------------------------------------------------------
    def log(self, event: str, record: dict[str, Any], numeric: dict[str, float]) -> None:
        if event == "eval" and not record.get("same_as"):  # a copy logged under a second name
            self.line(eval_summary(record, self.where(record) or "?"))
        elif event == "train" and self._stack:
            with self._lock:
                live = self._stack[-1]
                if "pairs_per_s" in numeric:
                    live.rate = f"{numeric['pairs_per_s']:.1f} pairs/s"
                if "loss" in numeric:
                    live.extra = f"loss {numeric['loss']:.3f}"
        elif event == "fault":
            self.line(f"[{self.where(record)}] a generation engine restarted; weights synced into it again")
        elif event == "resume":
            self.line(f"resumed after {self.where(record) or 'round 0'}, step {record.get('step')}")

    def close(self) -> None:
        """A tracker's close: the console outlives one pipeline (see `shutdown`)."""

    def shutdown(self) -> None:
        """Stop refreshing and leave the cursor on a fresh line."""
        self._stop.set()
        self._ticker.join(timeout=2 * REFRESH_S)
        with self._lock:
            if self.tty and self._shown:
                self._write("\n")
                self._shown = False
            self._stack.clear()


class ConsoleHandler(logging.Handler):
    """Logging records (WARNING and above) as console lines: `warning: ...`."""

    def __init__(self, console: Console, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.line(f"{record.levelname.lower()}: {record.getMessage()}")


_active: Console | None = None


def activate(console: Console | None) -> None:
    """Make `console` the process's console (None: back to plain logging and tqdm)."""
    global _active
    _active = console


def active() -> Console | None:
    return _active


def announce(text: str) -> None:
    """A line on the active console, else an INFO log line."""
    if _active is not None:
        _active.line(text)
    else:
        logging.getLogger("apo_pipeline").info(text)
