"""OnMC-PO: batched online MC-PO (MC-PO paper, Sec. 3.2 and App. B.1).

    total steps = one pass over the prompts (prompts / effective batch) unless loop.total_steps is set
    split the prompts and the total steps into S segments
    pi_ref = the starting policy (algorithm.reference: initial) -- or, with `round`, each segment's start
    for each segment s:
        sample K candidates per prompt from the current policy (2 each at T 0.6 / 0.8 / 1.0)
        the judge's iterative pairwise ranking (K-1 comparisons) picks the preferred y_w
        store log pi_ref of every candidate
        train: each step draws M negatives with the MC kernel softmax(beta log pi/pi_ref)
        sync the new weights into the generation engines, evaluate, checkpoint
    (re-running the same command resumes from the last checkpoint, inside a segment too, and
     reuses a segment's stored data instead of sampling it again)
    loop.stream: the first four lines of a segment overlap by chunks of prompts (loops/streaming.py)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from apo_pipeline.config import OnMCPOConfig
from apo_pipeline.loops.pairs import Judged, candidate_groups, judgements_from_rankings
from apo_pipeline.loops.pipeline import REFERENCE, Pipeline
from apo_pipeline.loops.resume import pending_rounds
from apo_pipeline.loops.schedule import epoch_steps, split_segments, steps_per_part
from apo_pipeline.loops.streaming import streamed_round
from apo_pipeline.rollout import Rollout, TrainGroup


def judged(pipe: Pipeline, rollouts: list[Rollout], s: int, chunk: int | None = None) -> Judged:
    """The judge's iterative ranking; every candidate stays in the group, the winner preferred."""
    rankings = pipe.rank(rollouts, s, chunk)
    return Judged(candidate_groups(rollouts, rankings), judgements_from_rankings(rollouts, rankings))


def segment_data(pipe: Pipeline, prompts: list[Any], s: int, reference: str | None) -> list[TrainGroup]:
    """Sample K candidates, rank them, store log pi_ref of every candidate (under the kept weights
    `reference`, None: the segment's start policy); tables written."""
    rollouts = pipe.generate(prompts, s)
    verdicts = judged(pipe, rollouts, s)
    pipe.rounds.event("data", s, prompts=len(rollouts), dropped_by_judge=verdicts.built.dropped)
    groups = pipe.reference_of(verdicts.built, rollouts, s, reference)
    pipe.store.save_tables(s, rollouts, verdicts.judgements, groups)
    return groups


def run(cfg: OnMCPOConfig, run_dir: Path, build: Callable[..., Pipeline] = Pipeline) -> Path:
    """Run OnMC-PO with the actors `build` makes (a `Pipeline`); returns the final policy's HF
    directory (`<run_dir>/final`)."""
    with build(cfg, run_dir, unit="segment") as pipe:
        at = pipe.resume()
        initial = cfg.algorithm.reference == "initial"
        # unset: one pass over the train prompts (the MC-PO paper: steps = data / effective batch)
        total = cfg.loop.total_steps or epoch_steps(len(pipe.prompts.train), pipe.batch_size, 1)
        if at.fresh:
            pipe.learner.new_iteration(total, reset_optimizer=False)  # one schedule over every segment
            pipe.evaluate(0)
            if initial:
                pipe.keep_reference()  # checkpoints carry it; a resume restores it
        segments = split_segments(pipe.prompts.train, cfg.loop.segments)
        steps = steps_per_part(total, cfg.loop.segments)
        reference = REFERENCE if initial else None
        step = at.step
        for s, prompts, done_steps in pending_rounds(segments, at):
            if cfg.loop.stream:
                step = streamed_round(pipe, prompts, s, steps[s - 1], step, done_steps,
                                      lambda rollouts, j, s=s: judged(pipe, rollouts, s, j), reference)
            else:
                groups = pipe.store.pairs(s, lambda: segment_data(pipe, prompts, s, reference))
                step = pipe.train(groups, steps[s - 1], s, step, done_steps)
            pipe.sync(s)
            if pipe.should_evaluate(s, len(segments)):
                pipe.evaluate(s)
            pipe.checkpoint(s, step)
        return pipe.export_final()
