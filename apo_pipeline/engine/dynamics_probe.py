"""The learner's gradient-dynamics probe (seed 003): POS / NEG norms, G against D', loss shares.

Every `algorithm.dynamics_every` steps each rank runs `probe` on its first micro-batch before the
training step. D' (`DynamicsTargets`) is the set of target responses of the paper's Fig. 1; the
pipeline sets it to the current policy's greedy responses on the held-out prompts after every
evaluation (docs/algorithms.md). Every rank holds all of D' and runs the same micro-batches over
it, so ZeRO-3's forward collectives stay in lockstep. The module runs outside the DeepSpeed engine
(its gradient hooks stay out of these extra backward passes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from apo_pipeline.dynamics import dpo_gradient_decomposition, target_nll_gradient
from apo_pipeline.engine.batching import MicroBatch, make_micro_batches
from apo_pipeline.engine.preference_batch import PreferenceBatch

LogpsFn = Callable[[torch.nn.Module, MicroBatch], Tensor]


@dataclass
class DynamicsTargets:
    """D' as micro-batches of (prompt, response) token ids and its response token count."""

    batches: list[MicroBatch]
    tokens: int


def make_targets(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], batch_size: int, pad_id: int
) -> DynamicsTargets | None:
    """D' from token ids (None when empty: G is then not measured)."""
    keep = [i for i, r in enumerate(responses) if r and prompts[i]]
    if not keep:
        return None
    prompts, responses = [prompts[i] for i in keep], [responses[i] for i in keep]
    return DynamicsTargets(make_micro_batches(prompts, responses, batch_size, pad_id, sort=True),
                           sum(len(r) for r in responses))


def probe(
    module: torch.nn.Module,
    logps: LogpsFn,
    batch: PreferenceBatch,
    beta: float,
    targets: DynamicsTargets | None,
    device: torch.device,
) -> dict[str, float]:
    """`dynamics.dpo_gradient_decomposition` on `batch` (M = 1, with references), with G when
    `targets` is set. Holds up to three full gradient copies (grad NLL(D'), POS, NEG) at a time."""
    params = [p for p in module.parameters() if p.requires_grad]
    target_grad = None
    if targets is not None:
        target_grad = target_nll_gradient(params, (logps(module, b) for b in targets.batches), targets.tokens)
    chosen, rejected = batch.split(logps(module, batch.micro))
    return dpo_gradient_decomposition(
        params, chosen, rejected, batch.ref_chosen.to(device), batch.ref_rejected.squeeze(1).to(device), beta,
        target_grad=target_grad,
    )
