"""Per-actor log files for `monitoring.console: quiet`: each actor's stdout and stderr (vLLM,
DeepSpeed, Python warnings, C++ messages) go to `<run>/logs/<actor name>.log`, the driver's to
`<run>/logs/driver.log`, and the terminal keeps only the console's lines.

Ray's own mechanisms do the work; no actor class is patched:
- the job's runtime env (`job_runtime_env`) carries LOG_DIR_ENV and a `worker_process_setup_hook`
  (`redirect_worker_output`), which Ray runs first thing in every worker process of the job;
- every actor's runtime env carries its name in ACTOR_NAME_ENV (`actor_env`, used by
  `Placement.options`): the hook points file descriptors 1 and 2 of that process at
  `<logs>/<name>.log`, appending, so a restarted actor goes on in the same file. Processes an
  actor starts inherit its runtime env and write to its file too. Workers without a name keep
  Ray's own log files;
- `ray.init(log_to_driver=False)` stops Ray from echoing worker output on the driver's terminal.
  Ray's own logs (`/tmp/ray/session_*/logs`) are kept as always.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

LOG_DIR_ENV = "APO_LOG_DIR"
ACTOR_NAME_ENV = "APO_ACTOR_NAME"
SETUP_HOOK = "apo_pipeline.monitoring.actor_logs.redirect_worker_output"
BASE_ENV = {"PYTHONUNBUFFERED": "1"}


def actor_env(name: str, **env_vars: str) -> dict[str, Any]:
    """The runtime env of actor `name` (plus `env_vars`): Ray merges it with the job's."""
    return {"env_vars": {ACTOR_NAME_ENV: name, **env_vars}}


def job_runtime_env(log_dir: Path | None) -> dict[str, Any]:
    """The job's runtime env; with `log_dir` (quiet console), actor output goes to files there."""
    if log_dir is None:
        return {"env_vars": dict(BASE_ENV)}
    return {"env_vars": {**BASE_ENV, LOG_DIR_ENV: str(log_dir)}, "worker_process_setup_hook": SETUP_HOOK}


def redirect_fds(path: Path) -> None:
    """Send this process's file descriptors 1 and 2 (and so sys.stdout / sys.stderr) to `path` (appended)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)


def redirect_worker_output() -> None:
    """Ray's worker_process_setup_hook: a named actor's output to `<LOG_DIR_ENV>/<name>.log`."""
    log_dir, name = os.environ.get(LOG_DIR_ENV), os.environ.get(ACTOR_NAME_ENV)
    if log_dir and name:
        redirect_fds(Path(log_dir) / f"{name}.log")


@contextmanager
def driver_output_to(path: Path) -> Iterator[TextIO]:
    """Inside: this process's stdout and stderr go to `path`; yields a text stream on the terminal
    (the former stderr) for the console. Both descriptors are restored on exit."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    try:
        redirect_fds(path)
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        terminal.close()
