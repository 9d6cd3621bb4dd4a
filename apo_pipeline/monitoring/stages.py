"""Per-stage wall-clock timing and progress: on the quiet console (`monitoring.console`) when one
is active, else a tqdm bar on a TTY and log lines in a job log.

    timer = StageTimer(logger, progress=cfg.monitoring.progress)
    with timer.stage("generate", iteration=3) as stage:
        ...
        stage["tokens"] = n_tokens          # optional: adds tokens_per_s to the event
    timer.breakdown()                       # {"generate": 12.5, ...} seconds

Each stage logs one "stage" event {stage, seconds, <fields>, [tokens, tokens_per_s, pairs, pairs_per_s]}.
`timer.stage(name)` also works as a decorator.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator, Sized
from contextlib import contextmanager
from typing import Any, TypeVar

from tqdm import tqdm

from apo_pipeline.monitoring import console
from apo_pipeline.monitoring.metrics import MetricsLogger

STAGES = ("generate", "judge", "ref_logprobs", "train", "sync", "checkpoint", "eval")
RATE_FIELDS = {"tokens": "tokens_per_s", "pairs": "pairs_per_s"}
LOG_FRACTION = 0.1  # without a TTY, a progress line per this fraction of the items
T = TypeVar("T")
log = logging.getLogger(__name__)


def progress(
    iterable: Iterable[T], desc: str, total: int | None = None, enabled: bool = True, unit: str = "steps"
) -> Iterable[T]:
    """On the active quiet console: counted on its progress line. Else a tqdm bar when stderr is a
    TTY, or (a job log) INFO lines `desc: 10/50 steps (20%)` about every 10% of `total` (default:
    len(iterable)) and at the end. Disabled: a pass-through."""
    if not enabled:
        return iterable
    live = console.active()
    if live is not None:
        return live.track(iterable, desc, total, unit)
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True)
    return _logged_progress(iterable, desc, total, unit)


def _logged_progress(iterable: Iterable[T], desc: str, total: int | None, unit: str) -> Iterator[T]:
    """Yield the items, logging after each completed tenth (and the last item; only it when no total)."""
    if total is None and isinstance(iterable, Sized):
        total = len(iterable)
    every = math.ceil(total * LOG_FRACTION) if total else 0
    done = logged = 0
    for item in iterable:
        yield item
        done += 1
        if every and done % every == 0:
            _log_progress(desc, done, total, unit)
            logged = done
    if done != logged:
        _log_progress(desc, done, total, unit)


def _log_progress(desc: str, done: int, total: int | None, unit: str) -> None:
    if total:
        log.info("%s: %d/%d %s (%.0f%%)", desc, done, total, unit, 100 * done / total)
    else:
        log.info("%s: %d %s", desc, done, unit)


class StageTimer:
    """Times named stages (one of `STAGES`), logs them, and keeps the total seconds per stage."""

    def __init__(self, logger: MetricsLogger | None = None, progress: bool = True) -> None:
        self.logger = logger
        self.show_progress = progress
        self._totals: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """Time the block; yields a dict whose entries (e.g. tokens, pairs) join the logged event.

        An exception inside the block is logged as `error` (its type name) and re-raised.
        """
        if name not in STAGES:
            raise ValueError(f"stage: expected one of {', '.join(STAGES)}, got {name!r}")
        extra: dict[str, Any] = {}
        live = console.active()
        if live is not None:
            live.stage_started(name, fields)
        start = time.perf_counter()
        try:
            yield extra
        except BaseException as exc:
            extra["error"] = type(exc).__name__
            raise
        finally:
            seconds = time.perf_counter() - start
            self._totals[name] = self._totals.get(name, 0.0) + seconds
            record = {"stage": name, "seconds": seconds, **fields, **extra}
            for count, rate in RATE_FIELDS.items():
                if count in record and rate not in record and seconds > 0:
                    record[rate] = record[count] / seconds
            if live is not None:
                live.stage_ended(record)
            if self.logger is not None:
                self.logger.log("stage", **record)

    def breakdown(self) -> dict[str, float]:
        """Total seconds per stage so far, in pipeline order (stages never entered are absent)."""
        return {s: self._totals[s] for s in STAGES if s in self._totals}

    def progress(self, iterable: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
        """`progress(...)` with this timer's on/off switch."""
        return progress(iterable, desc, total, enabled=self.show_progress)
