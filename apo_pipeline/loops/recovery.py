"""Job-level recovery: rebuild every actor from the last checkpoint after an actor death.

A generation engine or judge that dies is restarted by Ray and its calls re-sent where it
happened (`GenerationPool`, `Judge` options). A learner rank that dies breaks the DeepSpeed job
itself: nothing short of new ranks restored from a checkpoint helps. `run_with_recovery` calls
the loop again (which resumes from `LATEST`) up to `fault.job_restores` times, writing one line
per failure to `<run_dir>/failures.jsonl`; past that the error is raised.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ray.exceptions import RayActorError

from apo_pipeline.config import BaseJobConfig

log = logging.getLogger("apo_pipeline")
C = TypeVar("C", bound=BaseJobConfig)


def record_failure(run_dir: Path, attempt: int, exc: BaseException) -> None:
    """Append {time, attempt, error, message} to `<run_dir>/failures.jsonl`."""
    line = {"time": time.time(), "attempt": attempt, "error": type(exc).__name__, "message": str(exc)[:2000]}
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "failures.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def run_with_recovery(run: Callable[[C, Path], Path], cfg: C, run_dir: Path) -> Path:
    """`run(cfg, run_dir)`, called again after an actor death, at most `cfg.fault.job_restores` times."""
    restores, attempt = cfg.fault.job_restores, 0
    while True:
        try:
            return run(cfg, run_dir)
        except RayActorError as exc:
            record_failure(run_dir, attempt, exc)
            if attempt == restores:
                raise
            attempt += 1
            log.warning("an actor died (%s); restoring every actor from the last checkpoint (restore %d of %d)",
                        type(exc).__name__, attempt, restores)
