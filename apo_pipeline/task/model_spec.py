"""Model specs: ``builtin:tiny`` (built locally and cached) or an existing HF model directory.

Light on purpose (no torch import), so configs can validate a spec cheaply.
"""

from __future__ import annotations

import os
from pathlib import Path

BUILTIN_MODELS = ("builtin:tiny",)


def default_cache_dir() -> Path:
    """``$APO_CACHE_DIR`` or ``<repo>/.cache/apo-pipeline``."""
    env = os.environ.get("APO_CACHE_DIR")
    return Path(env) if env else Path(__file__).parents[2] / ".cache" / "apo-pipeline"


def is_builtin_model(spec: str) -> bool:
    """True for the names of built-in models (``builtin:tiny``)."""
    return spec in BUILTIN_MODELS


def resolve_model(spec: str, cache_dir: str | Path | None = None, seed: int = 0) -> Path:
    """A local HF model directory for ``spec``: a built-in name, or an existing directory.

    Raises ValueError for an unknown ``builtin:`` name and FileNotFoundError (naming the
    path) for a directory that is missing or has no ``config.json``. Never downloads.
    """
    if spec.startswith("builtin:"):
        if not is_builtin_model(spec):
            raise ValueError(f"unknown built-in model {spec!r}; known: {', '.join(BUILTIN_MODELS)}")
        from apo_pipeline.task.tiny_model import build_tiny_model

        return build_tiny_model(cache_dir=cache_dir, seed=seed)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model directory not found: {spec} (models are never downloaded)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"not an HF model directory (no config.json): {spec}")
    return path
