"""Iterative APO (accelerated preference optimization; alpha = 0 is iterative DPO / IPO / SPPO).

    theta_1 = the starting policy; thetahat_0 := theta_1
    for t = 1 .. T:
        sample K candidates per prompt from pi_t (the engines hold theta_t)
        judge: iterative ranking -> (winner, a random other)   [dpo / ipo]
               full win-rate matrix -> (argmax, argmin) + win probabilities   [sppo]
        store log pi_t of the pair (pi_t is the reference of this iteration)
        thetahat_{t+1} = E epochs of the loss against pi_t (fresh optimizer)
        sync thetahat_{t+1}, evaluate it ("policy: hat")
        theta_{t+1} = thetahat_{t+1} + alpha (thetahat_{t+1} - thetahat_t)
        sync theta_{t+1}, evaluate it ("policy: extrapolated"); it samples iteration t+1's data
        checkpoint (theta_{t+1} trained on, thetahat_{t+1} kept)
    output pihat_{T+1} (`final/`): the seed states its guarantees for it (y' ~ pihat_{T+1})
    loop.stream: sampling, judging, storing log pi_t and training overlap by chunks of prompts
    (loops/streaming.py); the E epochs count the prompts, so the steps are known up front
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from apo_pipeline.config import APOConfig
from apo_pipeline.engine.learner_worker import THETAHAT
from apo_pipeline.loops.pairs import Judged, judgements_from_rankings, judgements_from_win_rates, sppo_pairs, winner_vs_random
from apo_pipeline.loops.pipeline import Pipeline
from apo_pipeline.loops.resume import pending_rounds
from apo_pipeline.loops.schedule import epoch_steps, split_segments
from apo_pipeline.loops.streaming import streamed_round
from apo_pipeline.rollout import Rollout, TrainGroup
from apo_pipeline.seeds import derive_seed

HAT, EXTRAPOLATED = "hat", "extrapolated"  # the `policy` of APO's eval events


def judged(pipe: Pipeline, cfg: APOConfig, rollouts: list[Rollout], t: int, chunk: int | None = None) -> Judged:
    """sppo: win-rate matrices -> (argmax, argmin); dpo / ipo: ranking -> (winner, a random other)."""
    if cfg.algorithm.loss == "sppo":
        rates = pipe.win_rates(rollouts, t, chunk)
        return Judged(sppo_pairs(rollouts, rates), judgements_from_win_rates(rollouts, rates))
    rankings = pipe.rank(rollouts, t, chunk)
    seed = derive_seed(cfg.seed, "pairs", t, *([] if chunk is None else [chunk]))
    return Judged(winner_vs_random(rollouts, rankings, seed=seed), judgements_from_rankings(rollouts, rankings))


def iteration_data(pipe: Pipeline, cfg: APOConfig, prompts: list[Any], t: int) -> list[TrainGroup]:
    """Sample from pi_t, judge, build the pairs and store log pi_t with them; tables written."""
    rollouts = pipe.generate(prompts, t)
    verdicts = judged(pipe, cfg, rollouts, t)
    pipe.rounds.event("data", t, prompts=len(rollouts), dropped_by_judge=verdicts.built.dropped)
    groups = pipe.reference_of(verdicts.built, rollouts, t)
    pipe.store.save_tables(t, rollouts, verdicts.judgements, groups)
    return groups


def evaluate_both(pipe: Pipeline, t: int, alpha: float, evaluate: bool) -> None:
    """When `evaluate`: pihat_{t+1} (the trained weights), then theta_{t+1} (extrapolated), each
    synced into the engines and evaluated. The engines end with theta_{t+1} either way. alpha = 0
    makes the two the same weights: one sync, one evaluation, logged under both names."""
    if alpha and evaluate:
        pipe.sync(t)
        pipe.evaluate(t, HAT)
    pipe.learner.extrapolate(alpha)
    pipe.sync(t)
    if evaluate:
        fields = pipe.evaluate(t, EXTRAPOLATED)
        if not alpha:
            pipe.metrics.log("eval", **{**fields, "policy": HAT, "same_as": EXTRAPOLATED})


def run(cfg: APOConfig, run_dir: Path, build: Callable[..., Pipeline] = Pipeline) -> Path:
    """Run iterative APO with the actors `build` makes (a `Pipeline`); returns pihat_{T+1}'s HF
    directory (`<run_dir>/final`)."""
    T, alpha = cfg.loop.iterations, cfg.loop.alpha
    with build(cfg, run_dir, unit="iteration") as pipe:  # new_iteration sets each iteration's schedule
        at = pipe.resume()
        if at.fresh:
            start = pipe.evaluate(0, HAT)  # theta_1 = pihat_1: one evaluation, both names
            pipe.metrics.log("eval", **{**start, "policy": EXTRAPOLATED, "same_as": HAT})
            pipe.learner.snapshot_weights()
        step = at.step
        for t, prompts, done_steps in pending_rounds(split_segments(pipe.prompts.train, T), at):
            if cfg.loop.stream:
                steps = epoch_steps(len(prompts), pipe.batch_size, cfg.loop.epochs)
                if not done_steps:  # a mid-iteration checkpoint restored the optimizer and schedule
                    pipe.learner.new_iteration(steps)
                step = streamed_round(pipe, prompts, t, steps, step, done_steps,
                                      lambda rollouts, j, t=t: judged(pipe, cfg, rollouts, t, j), None)
            else:
                groups = pipe.store.pairs(t, lambda: iteration_data(pipe, cfg, prompts, t))
                steps = epoch_steps(len(groups), pipe.batch_size, cfg.loop.epochs)
                if not done_steps:
                    pipe.learner.new_iteration(steps)
                step = pipe.train(groups, steps, t, step, done_steps)
            evaluate_both(pipe, t, alpha, pipe.should_evaluate(t, T))
            pipe.checkpoint(t, step)
        return pipe.export_final(THETAHAT)
