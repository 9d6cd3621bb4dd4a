"""Build-once directories under the cache: built in a temporary sibling, renamed into place.

A directory counts as built only when its marker file exists. Builders of one directory are
serialised by a file lock, and a killed build leaves at most a `<name>.tmp-*` sibling (removed on
the next build), never a half-written directory that a later run would reuse.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock


def default_cache_dir() -> Path:
    """``$APO_CACHE_DIR`` or ``<repo>/.cache/apo-pipeline``."""
    env = os.environ.get("APO_CACHE_DIR")
    return Path(env) if env else Path(__file__).parents[2] / ".cache" / "apo-pipeline"


def build_once(final: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """`final` if `final/marker` exists; else `build(tmp)` into a fresh sibling, renamed to `final`.

    `build` must write `marker` last (its presence means the directory is complete).
    """
    if (final / marker).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / marker).is_file():
            return final
        shutil.rmtree(final, ignore_errors=True)  # an incomplete directory left by hand
        for stale in final.parent.glob(final.name + ".tmp-*"):  # a build that was killed
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
        try:
            tmp.chmod(0o755)
            build(tmp)
            if not (tmp / marker).is_file():
                raise RuntimeError(f"{final}: the build did not write its marker {marker!r}")
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
