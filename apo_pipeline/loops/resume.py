"""Round-level checkpoints and resume for the loops (no Ray here: the learner is passed in).

After every segment / iteration the loop writes `checkpoints/<unit>_<NNNN>/`: the DeepSpeed
checkpoint of every rank (model, optimizer, scheduler, APO snapshot) under `ds/`, the loop
state (round, global step, RNG states) and a manifest with checksums; `LATEST` is updated last.
Re-running the same command finds the newest valid checkpoint, refuses unsafe config changes,
restores the learner and continues with the next round.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import yaml

from apo_pipeline.config import BaseJobConfig, ConfigError
from apo_pipeline.storage import LoopState, capture_rng_state, latest_valid_checkpoint, load_loop_state, write_checkpoint

log = logging.getLogger("apo_pipeline")

DS_TAG = "ds"
# Keys whose change makes the saved state meaningless for the new run.
UNSAFE_ON_RESUME = (
    "job", "seed", "model.path", "algorithm.loss", "algorithm.beta", "generation.temperatures",
    "generation.n_per_temperature", "data.prompts", "data.num_prompts", "cluster.learner_ranks",
    "learner.zero_stage", "loop.segments", "loop.total_steps", "loop.alpha", "loop.dataset",
)


class Learner(Protocol):
    def save_checkpoint(self, directory: str, tag: str, client_state: dict | None = None) -> None: ...
    def load_checkpoint(self, directory: str, tag: str) -> dict: ...


def _get(tree: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def check_resume_config(saved: dict, cfg: BaseJobConfig) -> None:
    """ConfigError naming the first unsafe key whose value differs from the saved run's."""
    new = cfg.model_dump(mode="json")
    for key in UNSAFE_ON_RESUME:
        if _get(saved, key) != _get(new, key):
            raise ConfigError(
                f"{key}: cannot resume a run made with {_get(saved, key)!r} using {_get(new, key)!r}; "
                "use a new --run-dir or the old value"
            )


def read_saved_config(config_path: Path) -> dict | None:
    """The config.yaml of an existing run (None for a new run)."""
    return yaml.safe_load(config_path.read_text()) if config_path.is_file() else None


def save_round(run_root: Path, unit: str, index: int, step: int, learner: Learner, keep_last: int) -> Path:
    """Checkpoint after round `index` (next global step `step`); returns the checkpoint directory."""
    state = LoopState(step=step, rng=capture_rng_state(), **{unit: index})
    return write_checkpoint(
        run_root, f"{unit}_{index:04d}", state,
        save_fn=lambda tmp: learner.save_checkpoint(str(tmp), DS_TAG, {"unit": unit, "index": index, "step": step}),
        keep_last=keep_last,
    )


def restore_latest(run_root: Path, unit: str, learner: Learner) -> tuple[int, int]:
    """Restore the newest valid checkpoint into `learner`; (rounds done, next global step); (0, 0) if none."""
    ckpt = latest_valid_checkpoint(run_root)
    if ckpt is None:
        return 0, 0
    state = load_loop_state(ckpt)
    learner.load_checkpoint(str(ckpt), DS_TAG)
    done = getattr(state, unit)
    log.info("resuming from %s: %s %d done, next step %d", ckpt.name, unit, done, state.step)
    return done, state.step
