"""`RoundStore`: what a run keeps of its rounds, and how a re-run finds it again (no Ray here).

Per round, under `<run>/{seg,iter}_<NNNN>/`: `rollouts.parquet` and `judgements.parquet`, then
`pairs.parquet` (written last, atomically: its presence means the round's data is complete, and a
re-run trains on it instead of sampling again). Checkpoints go through `loops/resume.py`
(`save_round` / `restore_latest`); a restore also cuts metrics.jsonl back to what the checkpoint
saw, so the log reads as one uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from apo_pipeline.config.sections import CheckpointConfig
from apo_pipeline.loops.resume import Learner, ResumePoint, restore_latest, save_round
from apo_pipeline.loops.round_log import RoundLog
from apo_pipeline.rollout import Rollout, TrainGroup
from apo_pipeline.storage import Judgement, RunDir, read_pairs, write_judgements, write_pairs, write_rollouts


class RoundStore:
    """Tables and checkpoints of the rounds of `run_dir`, counted in `rounds.unit`."""

    def __init__(self, run_dir: RunDir, rounds: RoundLog, cfg: CheckpointConfig) -> None:
        self.run_dir = run_dir
        self.rounds = rounds
        self.cfg = cfg
        self.consumed_prompts = 0  # prompts whose round tables were written (kept in the loop state)

    def table_path(self, table: str, index: int) -> Path:
        """`<run>/<round dir>/<table>.parquet` of round `index` (rollouts | judgements | pairs)."""
        return self.run_dir.table_path(table, index, self.rounds.unit)

    def stored_pairs(self, index: int) -> list[TrainGroup] | None:
        """Round `index`'s pairs table if an earlier attempt already wrote it (logged as reused);
        None otherwise."""
        path = self.table_path("pairs", index)
        if not path.is_file():
            return None
        groups = read_pairs(path)
        self.rounds.event("data", index, reused=str(path.relative_to(self.run_dir.root)), pairs=len(groups))
        return groups

    def pairs(self, index: int, build: Callable[[], list[TrainGroup]]) -> list[TrainGroup]:
        """Round `index`'s stored pairs, else `build()` (which samples, judges and saves them)."""
        stored = self.stored_pairs(index)
        return build() if stored is None else stored

    def save_verdicts(self, index: int, rollouts: list[Rollout], judgements: list[Judgement]) -> None:
        """The rollouts and judgements tables of round `index`."""
        write_rollouts(self.table_path("rollouts", index), rollouts)
        write_judgements(self.table_path("judgements", index), judgements)

    def save_pairs(self, index: int, groups: list[TrainGroup]) -> None:
        """The pairs table of round `index` (last: it marks the round's data complete)."""
        write_pairs(self.table_path("pairs", index), groups)

    def save_tables(self, index: int, rollouts: list[Rollout], judgements: list[Judgement], groups: list[TrainGroup]) -> None:
        """rollouts / judgements / pairs of one sampled round; counts its prompts as consumed."""
        self.save_verdicts(index, rollouts, judgements)
        self.save_pairs(index, groups)
        self.consumed_prompts += len(rollouts)

    def checkpoint(self, point: ResumePoint, learner: Learner) -> None:
        """Checkpoint at `point` (after round `point.done`, plus `point.round_steps` steps of the
        next), timed as the "checkpoint" stage of round `point.done`, when `checkpoint.enabled`."""
        if self.cfg.enabled:
            with self.rounds.stage("checkpoint", point.done):
                save_round(self.run_dir, self.rounds.unit, point, learner, keep_last=self.cfg.keep_last,
                           metrics_lines=self.rounds.metrics.lines, consumed_prompts=self.consumed_prompts,
                           hf_export=self.cfg.save_hf)

    def restore(self, learner: Learner) -> tuple[ResumePoint, int | None]:
        """Restore the newest valid checkpoint into `learner` and cut metrics.jsonl back to what it
        saw (to nothing without one). Returns where to go on and how many metrics lines were moved
        to metrics.discarded.jsonl (None: there was no checkpoint)."""
        point, state = restore_latest(self.run_dir.root, self.rounds.unit, learner)
        discarded = self.rounds.metrics.rewind(state.metrics_lines if state else 0)
        if state is None:
            return point, None
        self.consumed_prompts = state.consumed_prompts
        return point, discarded
