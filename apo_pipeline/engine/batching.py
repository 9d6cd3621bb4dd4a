"""Micro-batches of (prompt, response) token-id sequences and their summed log-probs (pure torch).

A sequence is `prompt_ids + response_ids`. Micro-batches are right-padded to their own longest
sequence; with length bucketing the sequences are sorted by length first, so each micro-batch
holds similar lengths and little padding. `response_mask` marks the response tokens: the prompt
is masked out of every log-prob. Log-probs follow docs/DEVELOPING.md: per-sequence sums over
response tokens, float32, nats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class MicroBatch:
    """Right-padded sequences.

    input_ids [B, T] long (padding = `pad_id`); attention_mask [B, T] long (1 on real tokens);
    response_mask [B, T] bool (True on response tokens); index [B] long: each row's position in
    the caller's list. `logits_start`: the first position whose logits any response token needs
    (shortest prompt length - 1); a model may return logits for positions logits_start..T-1 only.
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    index: Tensor
    logits_start: int

    @property
    def token_counts(self) -> Tensor:
        """Response tokens per row, [B] long."""
        return self.response_mask.sum(dim=1)

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens in the micro-batch."""
        return int(self.attention_mask.sum())

    @property
    def logits_to_keep(self) -> int:
        """How many trailing positions need logits (HF `logits_to_keep`)."""
        return self.input_ids.shape[1] - self.logits_start


def length_buckets(lengths: Sequence[int], batch_size: int, *, sort: bool = True) -> list[list[int]]:
    """Indices into `lengths` chunked into micro-batches of at most `batch_size`.

    With `sort`, indices are ordered by descending length (ties by index) before chunking, so each
    chunk holds similar lengths; without, chunks follow the input order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)) if sort else list(range(len(lengths)))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def shard_indices(lengths: Sequence[int], num_shards: int) -> list[list[int]]:
    """Split indices into `num_shards` shards of near-equal count and token load.

    Indices are dealt longest first in snake order (0, 1, ..., n-1, n-1, ..., 0, ...); each shard
    lists its indices in ascending order. Shard sizes differ by at most one.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    shards: list[list[int]] = [[] for _ in range(num_shards)]
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    for position, index in enumerate(order):
        lap, offset = divmod(position, num_shards)
        shards[offset if lap % 2 == 0 else num_shards - 1 - offset].append(index)
    return [sorted(shard) for shard in shards]


def collate(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    index: Sequence[int],
    pad_id: int,
) -> MicroBatch:
    """One right-padded micro-batch of rows `index` of (prompts, responses).

    Every prompt and response must hold at least one token (the first response token is predicted
    from the last prompt token); a ValueError names the offending row.
    """
    if not index:
        raise ValueError("collate needs at least one sequence")
    for i in index:
        if not prompts[i] or not responses[i]:
            part = "prompt" if not prompts[i] else "response"
            raise ValueError(f"sequence {i}: empty {part}; every sequence needs >= 1 prompt and >= 1 response token")
    width = max(len(prompts[i]) + len(responses[i]) for i in index)
    input_ids = torch.full((len(index), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(index), width), dtype=torch.long)
    response_mask = torch.zeros((len(index), width), dtype=torch.bool)
    for row, i in enumerate(index):
        p, r = len(prompts[i]), len(responses[i])
        input_ids[row, : p + r] = torch.tensor([*prompts[i], *responses[i]], dtype=torch.long)
        attention_mask[row, : p + r] = 1
        response_mask[row, p : p + r] = True
    return MicroBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        index=torch.tensor(list(index), dtype=torch.long),
        logits_start=min(len(prompts[i]) for i in index) - 1,
    )


def make_micro_batches(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    batch_size: int,
    pad_id: int,
    *,
    sort: bool = True,
) -> list[MicroBatch]:
    """All sequences as micro-batches of at most `batch_size` rows (length-bucketed with `sort`)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    return [collate(prompts, responses, chunk, pad_id) for chunk in length_buckets(lengths, batch_size, sort=sort)]


def sequence_logps(logits: Tensor, batch: MicroBatch) -> Tensor:
    """Summed response-token log-probs per row, [B] float32 (nats), differentiable in `logits`.

    logits: [B, T - s, V] for positions s..T-1 of `batch`, s = T - logits.shape[1] <= logits_start
    (the full [B, T, V] works too). Token t is scored by the logits at t - 1; prompt and padding
    positions are excluded. Only response positions are normalised (memory ~ response tokens x V).
    """
    batch_size, width = batch.input_ids.shape
    start = width - logits.shape[1]
    if logits.shape[0] != batch_size or not 0 <= start <= batch.logits_start:
        raise ValueError(
            f"logits {tuple(logits.shape)} do not cover positions {batch.logits_start}..{width - 1} "
            f"of a [{batch_size}, {width}] batch"
        )
    targets = batch.input_ids[:, start + 1 :].to(logits.device)
    mask = batch.response_mask[:, start + 1 :].to(logits.device)
    scored = logits[:, : width - start - 1][mask].float()  # [N, V], N = response tokens
    token_logps = scored.gather(1, targets[mask].unsqueeze(1)).squeeze(1) - torch.logsumexp(scored, dim=1)
    rows = mask.nonzero()[:, 0]
    return torch.zeros(batch_size, dtype=torch.float32, device=logits.device).index_add(0, rows, token_logps)
