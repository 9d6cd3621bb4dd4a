"""The filesystem side of checkpoints: atomic commit, manifest with checksums, fallback, retention.

A checkpoint is `<run_dir>/checkpoints/<name>/` holding whatever the learner saves (model,
optimizer, scheduler, thetahat_t for APO) plus `loop_state.json` and `manifest.json`
({format, name, sequence, created, keep, files: [{path, size, sha256}]}, paths relative).
Commit protocol: write into `checkpoints/.tmp-<name>-<pid>/`, fsync every file and directory,
write the manifest, rename into place, fsync, then replace `<run_dir>/LATEST` (its content is the
checkpoint name) atomically. LATEST is the commit point: a crash or ENOSPC before it leaves the
previous checkpoint current. Loop state is JSON (RNG states included); nothing is pickled.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from apo_pipeline.storage.rundir import RunDir, atomic_write_bytes, atomic_write_text, fsync_path, write_file_synced

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOOP_STATE = "loop_state.json"
FORMAT = 1
_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or does not verify; the message names the file."""


@dataclass
class LoopState:
    """Where a loop stands. `iteration` / `segment`: rounds completed; `round_steps`: optimizer
    steps already taken inside the next round (a mid-round checkpoint); `step`: the next global
    step; `metrics_lines`: lines of metrics.jsonl written when the state was taken.
    `produced_files` are run-dir-relative paths; `rng` is `capture_rng_state()`."""

    iteration: int = 0
    segment: int = 0
    step: int = 0
    round_steps: int = 0
    metrics_lines: int = 0
    consumed_prompts: int = 0
    produced_files: list[str] = field(default_factory=list)
    rng: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Strict JSON (no NaN, no objects); CheckpointError if a field cannot be stored."""
        try:
            return json.dumps(asdict(self), allow_nan=False, indent=1)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{LOOP_STATE}: cannot store the loop state as JSON ({exc})") from None

    @classmethod
    def from_json(cls, text: str, source: str = LOOP_STATE) -> LoopState:
        """Parse and type-check; errors name `source` and the key."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{source}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: expected a JSON object")
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(data) - known):
            raise CheckpointError(f"{source}: unknown key {unknown[0]!r}")
        checks: dict[str, tuple[type, ...]] = {
            "iteration": (int,), "segment": (int,), "step": (int,), "round_steps": (int,), "metrics_lines": (int,),
            "consumed_prompts": (int,),
            "produced_files": (list,), "rng": (dict, type(None)), "extra": (dict,),
        }
        for key, value in data.items():
            if isinstance(value, bool) or not isinstance(value, checks[key]):
                raise CheckpointError(f"{source}: {key!r} has type {type(value).__name__}")
        if not all(isinstance(p, str) for p in data.get("produced_files", [])):
            raise CheckpointError(f"{source}: 'produced_files' must be a list of strings")
        return cls(**data)


def _b64(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    import torch

    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def capture_rng_state() -> dict[str, Any]:
    """RNG states of python `random`, numpy's global generator and torch (CPU + CUDA) as JSON-safe data."""
    import torch  # lazy: storage is imported by tools that never touch torch

    version, internal, gauss_next = random.getstate()
    np_state = np.random.get_state(legacy=False)
    cuda = [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
    return {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": np_state["state"]["key"].tolist(),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": {"cpu": _b64(torch.get_rng_state()), "cuda": cuda},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`; a malformed state raises CheckpointError naming the key."""
    import torch

    try:
        py, nps, th = state["python"], state["numpy"], state["torch"]
        random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
        np.random.set_state({
            "bit_generator": nps["bit_generator"],
            "state": {"key": np.asarray(nps["key"], dtype=np.uint32), "pos": nps["pos"]},
            "has_gauss": nps["has_gauss"], "gauss": nps["gauss"],
        })
        torch.set_rng_state(_unb64(th["cpu"]))
    except KeyError as exc:
        raise CheckpointError(f"rng state: missing key {exc.args[0]!r}") from None
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"rng state: cannot restore ({exc})") from None
    if th.get("cuda") and torch.cuda.is_available():
        if len(th["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([_unb64(s) for s in th["cuda"]])
        else:
            log.warning("rng state: %d CUDA states saved, %d devices now; CUDA RNG not restored",
                        len(th["cuda"]), torch.cuda.device_count())


def _file_entry(root: Path, path: Path) -> dict[str, Any]:
    """fsync `path` and describe it: {path (relative, '/'-separated), size (bytes), sha256}."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        while chunk := os.read(fd, _CHUNK):
            digest.update(chunk)
        os.fsync(fd)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    return {"path": path.relative_to(root).as_posix(), "size": size, "sha256": digest.hexdigest()}


def _seal(tmp: Path, name: str, sequence: int, keep: bool) -> None:
    """fsync everything under `tmp`, then write its manifest."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(tmp, topdown=False):
        for fname in filenames:
            path = Path(dirpath) / fname
            if path.is_symlink() or not path.is_file():
                raise CheckpointError(f"{path}: checkpoints hold regular files only")
            entries.append(_file_entry(tmp, path))
        fsync_path(dirpath)
    manifest = {"format": FORMAT, "name": name, "sequence": sequence, "created": time.time(), "keep": keep,
                "files": sorted(entries, key=lambda e: e["path"])}
    write_file_synced(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
    fsync_path(tmp)


def read_manifest(ckpt: str | Path) -> dict[str, Any]:
    """The parsed manifest.json of a checkpoint directory (CheckpointError if missing or malformed)."""
    path = Path(ckpt) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (checkpoint incomplete)") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), list):
        raise CheckpointError(f"{path}: not a format-{FORMAT} manifest")
    return manifest


def verify_checkpoint(ckpt: str | Path, checksums: bool = True) -> dict[str, Any]:
    """Check every file listed in the manifest (existence, size, and sha256 if `checksums`); return the manifest."""
    ckpt = Path(ckpt)
    manifest = read_manifest(ckpt)
    listed = {e.get("path") for e in manifest["files"]}
    if LOOP_STATE not in listed:
        raise CheckpointError(f"{ckpt / MANIFEST}: does not list {LOOP_STATE}")
    for entry in manifest["files"]:
        path = ckpt / entry["path"]
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        if path.stat().st_size != entry["size"]:
            raise CheckpointError(f"{path}: size {path.stat().st_size} != {entry['size']} in the manifest")
        if checksums and _file_entry(ckpt, path)["sha256"] != entry["sha256"]:
            raise CheckpointError(f"{path}: sha256 does not match the manifest")
    return manifest


def _committed(run: RunDir) -> list[tuple[int, Path, dict[str, Any]]]:
    """(sequence, dir, manifest) of checkpoints with a readable manifest, oldest first."""
    found = []
    if run.checkpoints_dir.is_dir():
        for child in run.checkpoints_dir.iterdir():
            if child.name.startswith(".") or not child.is_dir():
                continue
            try:
                manifest = read_manifest(child)
            except CheckpointError:
                continue
            found.append((int(manifest.get("sequence", -1)), child, manifest))
    return sorted(found, key=lambda t: t[0])


def _latest_name(run: RunDir) -> str | None:
    try:
        return run.latest_path.read_text().strip() or None
    except FileNotFoundError:
        return None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint directories with a readable manifest, oldest first (not verified)."""
    return [path for _, path, _ in _committed(RunDir(run_dir))]


def latest_valid_checkpoint(run_dir: str | Path, checksums: bool = True) -> Path | None:
    """The checkpoint LATEST names if it verifies; otherwise (with a warning) the newest one that does.

    Temporary `.tmp-*` directories are never considered. None if there is no valid checkpoint.
    `checksums=False` checks presence and sizes only (hashing reads every byte of a large checkpoint).
    """
    run = RunDir(run_dir)
    name = _latest_name(run)
    if name is not None:
        try:
            verify_checkpoint(run.checkpoints_dir / name, checksums)
            return run.checkpoints_dir / name
        except CheckpointError as exc:
            log.warning("LATEST checkpoint %r is not valid (%s); falling back to an earlier one", name, exc)
    for _, path, _ in reversed(_committed(run)):
        if path.name == name:
            continue
        try:
            verify_checkpoint(path, checksums)
        except CheckpointError as exc:
            log.warning("skipping checkpoint %s: %s", path.name, exc)
            continue
        if name is None:
            log.warning("no LATEST file in %s; using checkpoint %s", run.root, path.name)
        else:
            log.warning("using checkpoint %s instead of %r", path.name, name)
        return path
    return None


def load_loop_state(ckpt: str | Path) -> LoopState:
    """The LoopState saved in a checkpoint directory."""
    path = Path(ckpt) / LOOP_STATE
    return LoopState.from_json(path.read_text(), source=str(path))


def mark_keep(ckpt: str | Path, keep: bool = True) -> None:
    """Exempt a checkpoint from retention (rewrites its manifest atomically)."""
    manifest = read_manifest(ckpt)
    manifest["keep"] = keep
    atomic_write_text(Path(ckpt) / MANIFEST, json.dumps(manifest, indent=1))


def apply_retention(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete committed checkpoints except the newest `keep_last`, those marked keep and LATEST's; return removed."""
    if keep_last < 1:
        raise ValueError(f"keep_last: must be >= 1, got {keep_last}")
    run = RunDir(run_dir)
    committed = _committed(run)
    latest = _latest_name(run)
    recent = {path for _, path, _ in committed[-keep_last:]}
    removed = []
    for _, path, manifest in committed:
        if path in recent or manifest.get("keep") or path.name == latest:
            continue
        shutil.rmtree(path)
        removed.append(path)
    return removed


def _clean_stale(ckpt_root: Path) -> None:
    """Remove temporary directories left by crashed writers (names starting with '.')."""
    for child in ckpt_root.iterdir():
        if child.name.startswith((".tmp-", ".trash-")) and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)


def _is_no_space(exc: BaseException | None) -> bool:
    """ENOSPC / EDQUOT anywhere in the exception chain (torch.save wraps it in a RuntimeError)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def write_checkpoint(
    run_dir: str | Path,
    name: str,
    loop_state: LoopState,
    save_fn: Callable[[Path], None] | None = None,
    *,
    keep: bool = False,
    keep_last: int | None = None,
) -> Path:
    """Write checkpoint `name` atomically and make it LATEST; return its directory.

    `save_fn(tmp_dir)` writes the learner's files (model / optimizer / scheduler, any layout) into the
    temporary directory. A same-named checkpoint is replaced only once the new one is complete.
    `keep_last` applies retention afterwards. On ENOSPC (or any error) nothing changes: the temporary
    directory is removed, LATEST and the previous checkpoint stay as they were.
    """
    if not name or name.startswith(".") or "/" in name or os.sep in name:
        raise ValueError(f"name: a checkpoint name must be one path component not starting with '.', got {name!r}")
    run = RunDir(run_dir)
    root = run.checkpoints_dir
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale(root)
    sequence = max((seq for seq, _, _ in _committed(run)), default=0) + 1
    tmp, dest, trash = root / f".tmp-{name}-{os.getpid()}", root / name, root / f".trash-{name}-{os.getpid()}"
    moved_old = renamed = False
    try:
        tmp.mkdir()
        if save_fn is not None:
            save_fn(tmp)
        write_file_synced(tmp / LOOP_STATE, loop_state.to_json().encode())
        _seal(tmp, name, sequence, keep)
        if dest.exists():
            os.rename(dest, trash)
            moved_old = True
        os.rename(tmp, dest)
        renamed = True
        fsync_path(root)
        atomic_write_bytes(run.latest_path, f"{name}\n".encode())
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if renamed:
            shutil.rmtree(dest, ignore_errors=True)
        if moved_old:
            os.rename(trash, dest)
        if _is_no_space(exc):
            previous = _latest_name(run)
            state = f"LATEST still names {previous!r}" if previous else "there is no earlier checkpoint"
            raise CheckpointError(
                f"no space left on device while writing checkpoint {name!r} under {root}; nothing was changed, "
                f"{state}. Free disk space or lower checkpoint.keep_last."
            ) from exc
        raise
    shutil.rmtree(trash, ignore_errors=True)
    if keep_last is not None:
        apply_retention(run.root, keep_last)
    return dest
