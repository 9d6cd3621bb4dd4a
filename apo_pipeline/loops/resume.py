"""Round-level checkpoints and resume for the loops (no Ray here: the learner is passed in).

After every segment / iteration the loop writes `checkpoints/<unit>_<NNNN>/` (and, with
`checkpoint.every_steps`, `<unit>_<NNNN>_step_<SSSSSS>/` inside a round): the DeepSpeed
checkpoint of every rank (model, optimizer, scheduler, APO snapshot) under `ds/`, the HF export
under `hf/`, the loop state (rounds done, steps into the next round, global step, RNG states,
metrics.jsonl length, data files produced) and a manifest with checksums; `LATEST` is updated
last. Re-running the same command finds the newest valid checkpoint, refuses unsafe config
changes, restores the learner and goes on from exactly that point.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml

from apo_pipeline.config import BaseJobConfig, ConfigError
from apo_pipeline.storage import (
    LoopState, RunDir, capture_rng_state, latest_valid_checkpoint, load_loop_state, restore_rng_state, write_checkpoint,
)

log = logging.getLogger("apo_pipeline")
T = TypeVar("T")

DS_TAG = "ds"
HF_DIR = "hf"
# Keys whose change makes the saved state meaningless for the new run. The effective batch
# (micro batch x grad accum x ranks) sets a round's steps (OnMC-PO's default total steps, APO's
# epochs), so a mid-round checkpoint's step count depends on it; the kept reference weights
# depend on algorithm.reference.
UNSAFE_ON_RESUME = (
    "job", "seed", "model.path", "algorithm.loss", "algorithm.beta", "generation.temperatures",
    "generation.n_per_temperature", "data.prompts", "data.num_prompts", "cluster.learner_ranks",
    "learner.zero_stage", "loop.segments", "loop.total_steps", "loop.alpha", "loop.dataset",
    "algorithm.reference", "learner.micro_batch_size", "learner.grad_accum", "loop.dataset_format",
    "loop.dataset_columns", "loop.nectar_drop_ranks",
)


class Learner(Protocol):
    def save_checkpoint(self, directory: str, tag: str, client_state: dict | None = None) -> None: ...
    def load_checkpoint(self, directory: str, tag: str) -> dict: ...
    def export_hf(self, directory: str) -> None: ...


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


@dataclass
class ResumePoint:
    """Where a (re)started run begins: `done` rounds complete, the next global `step`, and
    `round_steps` optimizer steps already taken inside round `done + 1`."""

    done: int = 0
    step: int = 0
    round_steps: int = 0

    @property
    def fresh(self) -> bool:
        """Nothing was restored: the run starts from the starting policy."""
        return self.done == 0 and self.round_steps == 0

    def steps_done_in(self, index: int) -> int:
        """Optimizer steps of round `index` that the restored state already holds."""
        return self.round_steps if index == self.done + 1 else 0


def pending_rounds(parts: Sequence[T], at: ResumePoint) -> Iterator[tuple[int, T, int]]:
    """The rounds 1..len(parts) that `at` has not completed, as (index, the round's part, optimizer
    steps of that round the restored state already holds: `at.round_steps` for round `at.done + 1`)."""
    for index, part in enumerate(parts, start=1):
        if index > at.done:
            yield index, part, at.steps_done_in(index)


def save_round(
    run: RunDir, unit: str, point: ResumePoint, learner: Learner, *, keep_last: int, metrics_lines: int,
    consumed_prompts: int = 0, hf_export: bool = False,
) -> Path:
    """Checkpoint at `point` (after round `point.done`, plus `point.round_steps` steps of the next);
    with `hf_export`, the weights also as an HF model directory `hf/` inside the checkpoint."""
    tables = [*run.root.glob("*.parquet"), *run.root.glob("*/*.parquet")]
    produced = sorted(str(p.relative_to(run.root)) for p in tables)
    state = LoopState(
        step=point.step, round_steps=point.round_steps, metrics_lines=metrics_lines, rng=capture_rng_state(),
        consumed_prompts=consumed_prompts, produced_files=produced, **{unit: point.done},
    )
    name = f"{unit}_{point.done:04d}" + (f"_step_{point.round_steps:06d}" if point.round_steps else "")

    def save(tmp: Path) -> None:
        learner.save_checkpoint(str(tmp), DS_TAG, {"unit": unit, **asdict(point)})
        if hf_export:
            learner.export_hf(str(tmp / HF_DIR))

    return write_checkpoint(run.root, name, state, save_fn=save, keep_last=keep_last)


def restore_latest(run_root: Path, unit: str, learner: Learner) -> tuple[ResumePoint, LoopState | None]:
    """Restore the newest valid checkpoint into `learner`; where to go on, and the loop state
    restored (None and a fresh `ResumePoint` when there is no checkpoint)."""
    ckpt = latest_valid_checkpoint(run_root)
    if ckpt is None:
        return ResumePoint(), None
    state = load_loop_state(ckpt)
    learner.load_checkpoint(str(ckpt), DS_TAG)
    restore_rng_state(state.rng or {})
    point = ResumePoint(getattr(state, unit), state.step, state.round_steps)
    log.info("resuming from %s: %s %d done (+%d steps), next step %d", ckpt.name, unit, point.done, point.round_steps, point.step)
    return point, state
