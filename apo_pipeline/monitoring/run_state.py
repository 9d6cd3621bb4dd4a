"""The driver's liveness record, `<run>/driver.json`, which `apo-pipeline status` reads.

    {"pid": 4242, "host": "node-1", "started": 1796184000.0, "heartbeat": 1796184125.3,
     "state": "running", "ended": null, "error": null}

While the job runs, a daemon thread rewrites `heartbeat` every HEARTBEAT_S seconds (atomically).
When the job ends the driver writes `state`: finished, failed (with `error`, one line) or stopped
(Ctrl-C). A driver killed outright (SIGKILL, out of memory, a lost node) writes nothing more: its
record still says running while the heartbeat ages, and `driver_alive` turns false once the
heartbeat is older than STALE_S or (on this host) the process is gone.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any

from apo_pipeline.storage.rundir import RunDir, atomic_write_text

HEARTBEAT_S = 5.0
STALE_S = 30.0
END_STATES = ("finished", "failed", "stopped")


def read_driver_record(run: RunDir) -> dict[str, Any] | None:
    """The run's driver.json, or None if there is none (or it is unreadable)."""
    try:
        record = json.loads(run.driver_path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def driver_alive(record: dict[str, Any], now: float | None = None) -> bool:
    """A running record whose heartbeat is fresh and, on this host, whose process exists."""
    if record.get("state") != "running":
        return False
    now = time.time() if now is None else now
    if now - float(record.get("heartbeat", 0.0)) > STALE_S:
        return False
    return record.get("host") != socket.gethostname() or _pid_alive(int(record.get("pid", -1)))


class DriverRecord:
    """Context manager around a job: `running` with heartbeats inside, the end state on exit.

    The exception leaving the block decides the end state: none -> finished, KeyboardInterrupt ->
    stopped, any other -> failed with `<Type>: <message>`.
    """

    def __init__(self, run: RunDir, interval_s: float = HEARTBEAT_S) -> None:
        self.run = run
        self.interval_s = interval_s
        now = time.time()
        self.record: dict[str, Any] = {
            "pid": os.getpid(), "host": socket.gethostname(), "started": now, "heartbeat": now,
            "state": "running", "ended": None, "error": None,
        }
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="apo-heartbeat", daemon=True)

    def _write(self) -> None:
        atomic_write_text(self.run.driver_path, json.dumps(self.record))

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                if self._stop.is_set():
                    return
                self.record["heartbeat"] = time.time()
                self._write()

    def __enter__(self) -> DriverRecord:
        self.run.root.mkdir(parents=True, exist_ok=True)
        self._write()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            state, error = "finished", None
        elif issubclass(exc_type, KeyboardInterrupt):
            state, error = "stopped", "interrupted (Ctrl-C)"
        else:
            state, error = "failed", f"{exc_type.__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        self.end(state, error)

    def end(self, state: str, error: str | None = None) -> None:
        """Stop the heartbeat and write the end state (idempotent: the first call wins)."""
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
            now = time.time()
            self.record.update(state=state, error=error, ended=now, heartbeat=now)
            self._write()
        self._thread.join(timeout=self.interval_s + 1)
