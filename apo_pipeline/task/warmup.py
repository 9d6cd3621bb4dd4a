"""Supervised warm-up of a causal LM on the synthetic task's imperfect demonstrations."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from apo_pipeline.monitoring.stages import progress
from apo_pipeline.task.synthetic import SyntheticTask, format_prompt, stable_int

IGNORE_INDEX = -100


@dataclass(frozen=True)
class WarmupStats:
    """A warm-up run: ``seconds`` of wall time; ``final_loss``: nats/token, last 10% of steps."""

    steps: int
    seconds: float
    final_loss: float


def encode_sft_batch(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], responses: list[str]
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``labels``, each [B, T] int64.

    A row is prompt tokens + response tokens + EOS; labels are -100 on the prompt and padding.
    """
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    rows, masks = [], []
    for p, r in zip(prompt_ids, response_ids):
        r = r + [tokenizer.eos_token_id]
        rows.append(p + r)
        masks.append([False] * len(p) + [True] * len(r))
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (row, mask) in enumerate(zip(rows, masks)):
        n = len(row)
        ids[i, :n] = torch.tensor(row)
        attn[i, :n] = 1
        labels[i, :n] = torch.where(torch.tensor(mask), ids[i, :n], IGNORE_INDEX)
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def _lr_factor(step: int, total: int, warmup_frac: float = 0.05, floor: float = 0.1) -> float:
    """Linear warm-up then cosine decay to ``floor`` (a multiplier of the peak learning rate)."""
    warm = max(1, int(total * warmup_frac))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, then restore the previous count.

    The model's matmuls are too small to gain from threads, and on a busy 2-core machine
    OpenMP workers spin against other processes (about 8x slower per step measured).
    A fixed count also keeps the trained weights independent of the machine's core count.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def sft_warmup(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: SyntheticTask,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> WarmupStats:
    """Train ``model`` in place with AdamW on fresh train-split demonstrations each step.

    The data order is fixed by ``seed`` and torch runs on one thread, so the same seed and
    settings give bitwise identical weights.
    """
    rng = np.random.default_rng(stable_int("sft", seed))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=learning_rate, betas=(0.9, 0.98), weight_decay=0.01
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps))
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    with single_thread():
        for _ in progress(range(steps), "building the built-in model: supervised warm-up (first run only)"):
            prompts = [format_prompt(task.sample_digits(rng, "train")) for _ in range(batch_size)]
            responses = [task.demonstration(p, rng) for p in prompts]
            loss = model(**encode_sft_batch(tokenizer, prompts, responses)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
    model.eval()
    tail = losses[-max(1, steps // 10) :] if losses else [float("nan")]
    return WarmupStats(
        steps=steps, seconds=time.perf_counter() - start, final_loss=float(np.mean(tail))
    )
