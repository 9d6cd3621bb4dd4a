"""Offline MC-PO (MC-PO paper, Algorithm 1) on a dataset that already holds K candidates per prompt.

    dataset = rows (x, y_1..y_K, preferred w)     [`builtin`: sampled once from the starting
                                                   policy and ranked by the judge]
    store log pi_ref of every candidate (pi_ref = the starting policy)
    for each epoch: train, each step drawing M negatives with the sampler
                    (mc: softmax(beta log pi/pi_ref); random = RNCE; max; min)
                    then sync and evaluate
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from transformers import AutoTokenizer

from apo_pipeline.config import MCPOConfig
from apo_pipeline.loops.offline_data import read_candidate_rows, tokenize_rows
from apo_pipeline.loops.pairs import candidate_groups, judgements_from_rankings
from apo_pipeline.loops.pipeline import Pipeline
from apo_pipeline.loops.resume import pending_rounds
from apo_pipeline.loops.schedule import epoch_steps
from apo_pipeline.rollout import TrainGroup
from apo_pipeline.task import load_prompts
from apo_pipeline.task.prompts import as_user_turn


def builtin_dataset(pipe: Pipeline, cfg: MCPOConfig) -> list[TrainGroup]:
    """Sample K candidates per prompt of data.prompts (at most loop.builtin_prompts) from the
    starting policy and rank them (index 0; rollouts and judgements tables written)."""
    d = cfg.data
    limit = cfg.loop.builtin_prompts
    prompts = load_prompts(d.prompts, split="train", limit=limit, on_error=d.on_error, seed=cfg.seed).prompts
    if d.chat:  # as Pipeline._load_prompts: plain-text prompts as a user turn of the chat template
        prompts = [as_user_turn(p) for p in prompts]
    rollouts = pipe.generate(prompts, 0)
    rankings = pipe.rank(rollouts, 0)
    built = candidate_groups(rollouts, rankings)
    pipe.store.save_verdicts(0, rollouts, judgements_from_rankings(rollouts, rankings))
    pipe.rounds.event("data", 0, prompts=len(rollouts), dropped_by_judge=built.dropped)
    return built.groups


def file_dataset(pipe: Pipeline, cfg: MCPOConfig) -> list[TrainGroup]:
    """Read and tokenize a K-candidate dataset file (JSONL / Parquet / datasets dir) in loop.dataset_format."""
    loop = cfg.loop
    rows, skipped = read_candidate_rows(loop.dataset, on_error=cfg.data.on_error, fmt=loop.dataset_format,
                                        columns=loop.dataset_columns, drop_ranks=tuple(loop.nectar_drop_ranks))
    if skipped:
        pipe.metrics.log("data", source="loop.dataset", skipped=skipped)
    return tokenize_rows(rows, AutoTokenizer.from_pretrained(pipe.model_dir), chat=cfg.data.chat)


def dataset(pipe: Pipeline, cfg: MCPOConfig) -> list[TrainGroup]:
    """The K-candidate groups with log pi_ref (the starting policy) of every candidate; pairs table written."""
    raw = builtin_dataset(pipe, cfg) if cfg.loop.dataset == "builtin" else file_dataset(pipe, cfg)
    groups = pipe.reference_logps(raw, 0)
    pipe.store.save_pairs(0, groups)
    return groups


def run(cfg: MCPOConfig, run_dir: Path, build: Callable[..., Pipeline] = Pipeline) -> Path:
    """Run offline MC-PO with the actors `build` makes (a `Pipeline`); returns the final policy's HF
    directory (`<run_dir>/final`). Rounds are epochs; the LR schedule spans all of them."""
    epochs = cfg.loop.epochs
    with build(cfg, run_dir, unit="iteration") as pipe:  # the schedule is set below, once the data is known
        at = pipe.resume()
        if at.fresh:
            pipe.evaluate(0)
        groups = pipe.store.pairs(0, lambda: dataset(pipe, cfg))
        steps = epoch_steps(len(groups), pipe.batch_size, 1)
        if at.fresh:
            pipe.learner.new_iteration(steps * epochs, reset_optimizer=False)
        step = at.step
        for epoch, _, done_steps in pending_rounds([groups] * epochs, at):
            step = pipe.train(groups, steps, epoch, step, done_steps)
            pipe.sync(epoch)
            if pipe.should_evaluate(epoch, epochs):
                pipe.evaluate(epoch)
            pipe.checkpoint(epoch, step)
        return pipe.export_final()
