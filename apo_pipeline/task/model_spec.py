"""Model specs: `builtin:tiny` (built locally and cached), `builtin:smollm2` and `gguf:PATH`
(GGUF files converted once into the cache, task/model_sources.py), or an existing HF directory.

Light on purpose (no torch import), so configs can validate a spec cheaply; `check_model` checks a
spec without building or converting anything (what a pre-flight check before Ray calls).
"""

from __future__ import annotations

from pathlib import Path

from apo_pipeline.task.model_sources import (
    BUILTIN_GGUF, GGUF_PREFIX, MissingModelError, ModelSourceError, check_gguf_source, is_gguf_source, resolve_gguf,
)

BUILTIN_MODELS = ("builtin:tiny", *BUILTIN_GGUF)


def is_builtin_model(spec: str) -> bool:
    """True for the names of built-in models (``builtin:tiny``, ``builtin:smollm2``)."""
    return spec in BUILTIN_MODELS


def check_model(spec: str, key: str = "model.path", cache_dir: str | Path | None = None) -> None:
    """Raise ModelSourceError (one line naming `key`) unless `spec` can be resolved: a known
    built-in name, a GGUF source whose file (and converter, unless cached) is there, or an HF
    directory with a ``config.json``. Builds and converts nothing."""
    if is_gguf_source(spec):
        check_gguf_source(spec, key, cache_dir)
    elif spec.startswith("builtin:"):
        if not is_builtin_model(spec):
            raise ModelSourceError(f"{key}: unknown built-in model {spec!r}; known: {', '.join(BUILTIN_MODELS)} or {GGUF_PREFIX}PATH")
    else:
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise MissingModelError(f"{key}: model directory not found: {spec} (models are never downloaded)")
        if not (path / "config.json").is_file():
            raise MissingModelError(f"{key}: not an HF model directory (no config.json): {spec}")


def resolve_model(spec: str, cache_dir: str | Path | None = None, seed: int = 0, key: str = "model.path") -> Path:
    """A local HF model directory for ``spec`` (see the module docstring); builds or converts a
    built-in or GGUF model on first use. Raises ModelSourceError naming `key` (MissingModelError,
    also a FileNotFoundError, for a missing path). Never downloads."""
    check_model(spec, key, cache_dir)
    if is_gguf_source(spec):
        return resolve_gguf(spec, key, cache_dir)
    if spec == "builtin:tiny":
        from apo_pipeline.task.tiny_model import build_tiny_model

        return build_tiny_model(cache_dir=cache_dir, seed=seed)
    return Path(spec).expanduser()
