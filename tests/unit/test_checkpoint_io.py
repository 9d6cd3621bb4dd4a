"""Checkpoint commit protocol: manifest checksums, fallback on corruption, retention, ENOSPC, RNG state."""

from __future__ import annotations

import errno
import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from apo_pipeline.storage import (
    CheckpointError,
    LoopState,
    RunDir,
    capture_rng_state,
    latest_valid_checkpoint,
    list_checkpoints,
    load_loop_state,
    mark_keep,
    read_manifest,
    restore_rng_state,
    verify_checkpoint,
    write_checkpoint,
)
from apo_pipeline.storage import rundir


def _save_model(tag: str):
    def save(tmp: Path) -> None:
        (tmp / "model").mkdir()
        torch.save({"w": torch.full((4, 4), float(len(tag)))}, tmp / "model" / "weights.pt")
        (tmp / "optimizer.bin").write_bytes(tag.encode() * 100)

    return save


def _write(run: Path, name: str, step: int, **kwargs) -> Path:
    return write_checkpoint(run, name, LoopState(step=step, iteration=step // 10), _save_model(name), **kwargs)


def _latest(run: Path) -> str:
    return (run / "LATEST").read_text().strip()


def test_write_commits_manifest_and_latest(tmp_path):
    ckpt = _write(tmp_path, "step_10", 10)
    assert ckpt == tmp_path / "checkpoints" / "step_10" and _latest(tmp_path) == "step_10"
    manifest = verify_checkpoint(ckpt)
    listed = {e["path"]: e for e in manifest["files"]}
    assert set(listed) == {"loop_state.json", "model/weights.pt", "optimizer.bin"}
    assert listed["optimizer.bin"]["size"] == 700
    assert all(len(e["sha256"]) == 64 for e in listed.values())
    assert load_loop_state(ckpt).step == 10
    assert latest_valid_checkpoint(tmp_path) == ckpt
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_latest_is_updated_last(tmp_path, monkeypatch):
    _write(tmp_path, "a", 1)
    seen = {}
    real = rundir.atomic_write_bytes

    def spy(path, data):
        if Path(path).name == "LATEST":
            ckpt = tmp_path / "checkpoints" / data.decode().strip()
            seen["verified"] = verify_checkpoint(ckpt)["name"]
            seen["previous"] = _latest(tmp_path)
        real(path, data)

    from apo_pipeline.storage import checkpoint_io

    monkeypatch.setattr(checkpoint_io, "atomic_write_bytes", spy)
    _write(tmp_path, "b", 2)
    assert seen == {"verified": "b", "previous": "a"}
    assert _latest(tmp_path) == "b"


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete_manifest", "delete_file", "garbage_manifest"])
def test_fallback_to_previous_on_corruption(tmp_path, caplog, damage):
    first = _write(tmp_path, "step_10", 10)
    second = _write(tmp_path, "step_20", 20)
    weights = second / "model" / "weights.pt"
    if damage == "flip_byte":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-5])
    elif damage == "delete_manifest":
        (second / "manifest.json").unlink()
    elif damage == "delete_file":
        weights.unlink()
    else:
        (second / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError):
        verify_checkpoint(second)
    with caplog.at_level(logging.WARNING):
        assert latest_valid_checkpoint(tmp_path) == first
    assert "step_20" in caplog.text and "not valid" in caplog.text


def test_size_only_check_misses_a_flip_but_catches_truncation(tmp_path):
    ckpt = _write(tmp_path, "s", 1)
    blob = ckpt / "optimizer.bin"
    blob.write_bytes(b"X" + blob.read_bytes()[1:])
    verify_checkpoint(ckpt, checksums=False)
    with pytest.raises(CheckpointError, match=r"optimizer\.bin: sha256"):
        verify_checkpoint(ckpt)
    blob.write_bytes(b"short")
    with pytest.raises(CheckpointError, match=r"optimizer\.bin: size"):
        verify_checkpoint(ckpt, checksums=False)


def test_half_written_temp_dir_is_never_picked(tmp_path):
    first = _write(tmp_path, "step_10", 10)
    # a writer that crashed after sealing but before the rename: complete-looking, still temporary
    crashed = tmp_path / "checkpoints" / ".tmp-step_20-999"
    _write(tmp_path / "other", "step_15", 15)
    _write(tmp_path / "other", "step_20", 20).rename(crashed)  # sequence 2: newer than step_10
    # a directory without manifest under a plain name
    (tmp_path / "checkpoints" / "step_30").mkdir()
    assert latest_valid_checkpoint(tmp_path) == first
    (tmp_path / "LATEST").unlink()
    assert latest_valid_checkpoint(tmp_path) == first
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_10"]


def test_no_checkpoint_and_failing_save_fn(tmp_path):
    assert latest_valid_checkpoint(tmp_path) is None

    def crash(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(tmp_path, "c", LoopState(), crash)
    assert latest_valid_checkpoint(tmp_path) is None
    assert list((tmp_path / "checkpoints").iterdir()) == []
    assert not (tmp_path / "LATEST").exists()


def test_rewrite_same_name_replaces_only_when_complete(tmp_path):
    _write(tmp_path, "final", 1)
    ckpt = _write(tmp_path, "final", 2)
    assert load_loop_state(ckpt).step == 2 and read_manifest(ckpt)["sequence"] == 2
    assert latest_valid_checkpoint(tmp_path) == ckpt


def test_retention_keeps_last_n_marked_and_latest(tmp_path):
    for step in range(1, 4):
        _write(tmp_path, f"s{step}", step)
    mark_keep(tmp_path / "checkpoints" / "s1")
    verify_checkpoint(tmp_path / "checkpoints" / "s1")
    for step in range(4, 7):
        _write(tmp_path, f"s{step}", step, keep_last=2)
    _write(tmp_path, "s7", 7, keep=True, keep_last=2)
    _write(tmp_path, "s8", 8, keep_last=2)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["s1", "s7", "s8"]
    _write(tmp_path, "s9", 9, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["s1", "s7", "s9"]


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failing_write", [0, 1, 2], ids=["loop_state", "manifest", "LATEST"])
def test_enospc_leaves_previous_checkpoint_current(tmp_path, monkeypatch, failing_write):
    first = _write(tmp_path, "step_10", 10)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    real, calls = rundir.write_fd, []

    def write_fd(fd, data):
        calls.append(len(data))
        if len(calls) - 1 == failing_write:
            _no_space()
        real(fd, data)

    monkeypatch.setattr(rundir, "write_fd", write_fd)
    with pytest.raises(CheckpointError, match=r"no space left on device.*'step_20'.*LATEST still names 'step_10'"):
        _write(tmp_path, "step_20", 20)
    monkeypatch.undo()
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
    assert latest_valid_checkpoint(tmp_path) == first


def test_enospc_inside_save_fn(tmp_path):
    _write(tmp_path, "a", 1)

    def save(tmp: Path) -> None:
        (tmp / "big.bin").write_bytes(b"0" * 100)
        raise RuntimeError("file write failed") from OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointError, match="no space left"):
        write_checkpoint(tmp_path, "b", LoopState(), save)
    assert _latest(tmp_path) == "a"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["a"]


def test_loop_state_json_round_trip_and_errors(tmp_path):
    state = LoopState(iteration=3, segment=1, step=42, consumed_prompts=128,
                      produced_files=["iter_0003/pairs.parquet"], rng=capture_rng_state(), extra={"alpha": 0.3})
    ckpt = write_checkpoint(tmp_path, "c", state)
    assert load_loop_state(ckpt) == state
    raw = json.loads((ckpt / "loop_state.json").read_text())
    assert isinstance(raw["rng"]["torch"]["cpu"], str)  # base64, not pickle
    with pytest.raises(CheckpointError, match="'step' has type str"):
        LoopState.from_json(json.dumps({**raw, "step": "42"}))
    with pytest.raises(CheckpointError, match="unknown key 'epoch'"):
        LoopState.from_json(json.dumps({"epoch": 1}))
    with pytest.raises(CheckpointError, match="not valid JSON"):
        LoopState.from_json("{")
    with pytest.raises(CheckpointError, match="cannot store the loop state"):
        write_checkpoint(tmp_path, "d", LoopState(extra={"lr": float("nan")}))
    assert latest_valid_checkpoint(tmp_path) == ckpt


def _draw() -> tuple:
    return random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist()


def test_rng_state_round_trip_reproduces_draws():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    np.random.randn()
    state = json.loads(json.dumps(capture_rng_state()))
    expected = _draw()
    _draw()
    restore_rng_state(state)
    assert _draw() == expected


def test_rng_state_errors_name_the_key():
    state = capture_rng_state()
    del state["numpy"]["key"]
    with pytest.raises(CheckpointError, match="missing key 'key'"):
        restore_rng_state(state)
    state = capture_rng_state()
    state["torch"]["cpu"] = "AAAA"
    with pytest.raises(CheckpointError, match="cannot restore"):
        restore_rng_state(state)


def test_bad_checkpoint_names(tmp_path):
    for name in ("", ".hidden", "a/b"):
        with pytest.raises(ValueError, match="name"):
            write_checkpoint(tmp_path, name, LoopState())
    assert RunDir(tmp_path).checkpoints_dir.exists() is False
