"""MC-PO negative sampler (seed 002, Algorithm 1 and Sec. 3.1; reading in docs/algorithms.md).

For each prompt, K candidates with policy / reference log-probs (per-sequence sums, nats) and a
preferred index w. The kernel weights over the non-preferred candidates are
q_j = softmax_j(beta * (log pi(y_j) - log pi_ref(y_j))), j != w, and q_w = 0.
Variants: `mc` samples M negatives from q without replacement; `random` samples uniformly
(RNCE); `max` / `min` take the M largest / smallest weights. A multi-step `mc` chain
(steps > 1 with proposal_size L) is iterated sampling-importance-resampling: start from uniform
negatives, and each step resamples M from {current} + L fresh uniform proposals by q.
Everything is batched over prompts and runs without gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

VARIANTS = ("mc", "random", "max", "min")


@dataclass
class NegativeSample:
    """indices [B, M] (long, distinct per row, never the preferred), weights [B, K] (q, 0 at the
    preferred, rows sum to 1) and entropy [B] (nats) of q, for monitoring."""

    indices: Tensor
    weights: Tensor
    entropy: Tensor


def sample_negatives(
    policy_logps: Tensor,
    ref_logps: Tensor,
    preferred: Tensor,
    num_negatives: int,
    *,
    beta: float,
    variant: str = "mc",
    steps: int = 1,
    proposal_size: int | None = None,
    generator: torch.Generator | None = None,
) -> NegativeSample:
    """Pick `num_negatives` (M) negatives per prompt.

    policy_logps, ref_logps: [B, K]; preferred: [B] long in [0, K). `steps` / `proposal_size`
    (L, 1 <= L < K-1-M) configure the `mc` chain; proposal_size None means one exact draw from q.
    Random draws use `generator` (CPU default; its device is where the noise is drawn).
    """
    eligible = _validate(policy_logps, ref_logps, preferred, num_negatives, variant, steps, proposal_size)
    noise = _Noise(generator, policy_logps.shape)
    with torch.no_grad():
        logits = beta * (policy_logps.detach().double() - ref_logps.detach().double())
        masked = _restrict(logits, eligible)
        log_q = torch.log_softmax(masked, dim=-1)
        weights = log_q.exp()
        entropy = -(weights * log_q.masked_fill(~eligible, 0.0)).sum(dim=-1)
        if variant == "max":
            indices = masked.topk(num_negatives, dim=-1).indices
        elif variant == "min":
            indices = _restrict(-logits, eligible).topk(num_negatives, dim=-1).indices
        elif variant == "random":
            indices = noise.top_k(_restrict(torch.zeros_like(logits), eligible), num_negatives)
        elif proposal_size is None:
            indices = noise.top_k(masked, num_negatives)
        else:
            indices = _chain(logits, eligible, num_negatives, steps, proposal_size, noise)
    dtype = policy_logps.dtype if policy_logps.is_floating_point() else torch.float32
    return NegativeSample(indices=indices, weights=weights.to(dtype), entropy=entropy.to(dtype))


def _chain(logits: Tensor, eligible: Tensor, m: int, steps: int, proposals: int, noise: "_Noise") -> Tensor:
    """i-SIR chain over candidate sets: init uniform; each step draws `proposals` uniform new
    candidates outside the state and resamples M from state + proposals by q (no replacement)."""
    uniform = torch.zeros_like(logits)
    state = noise.top_k(_restrict(uniform, eligible), m)
    for _ in range(steps):
        in_state = torch.zeros_like(eligible).scatter_(1, state, True)
        drawn = noise.top_k(_restrict(uniform, eligible & ~in_state), proposals)
        pool = in_state.scatter(1, drawn, True)
        state = noise.top_k(_restrict(logits, pool), m)
    return state


def _restrict(logits: Tensor, allowed: Tensor) -> Tensor:
    """logits where `allowed`, -inf elsewhere (never picked by top-k while enough are allowed)."""
    return logits.masked_fill(~allowed, -torch.inf)


class _Noise:
    """Gumbel-top-k sampling without replacement: the k largest of logits + Gumbel noise are a
    draw of k items without replacement from softmax(logits) (-inf entries are never drawn)."""

    def __init__(self, generator: torch.Generator | None, shape: torch.Size) -> None:
        self.generator = generator
        self.shape = shape
        self.device = generator.device if generator is not None else torch.device("cpu")

    def top_k(self, masked_logits: Tensor, k: int) -> Tensor:
        u = torch.rand(self.shape, generator=self.generator, dtype=torch.float64, device=self.device)
        gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float64).tiny)))
        keys = masked_logits + gumbel.to(masked_logits.device)
        return keys.topk(k, dim=-1).indices


def _validate(
    policy_logps: Tensor,
    ref_logps: Tensor,
    preferred: Tensor,
    m: int,
    variant: str,
    steps: int,
    proposal_size: int | None,
) -> Tensor:
    """Check the arguments; return the [B, K] mask of non-preferred candidates."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if policy_logps.dim() != 2 or ref_logps.shape != policy_logps.shape:
        shapes = f"{tuple(policy_logps.shape)} and {tuple(ref_logps.shape)}"
        raise ValueError(f"policy_logps and ref_logps must both be [B, K], got {shapes}")
    b, k = policy_logps.shape
    if not (torch.isfinite(policy_logps).all() and torch.isfinite(ref_logps).all()):
        raise ValueError("policy_logps and ref_logps must be finite")
    if preferred.shape != (b,) or preferred.dtype not in (torch.int32, torch.int64):
        got = f"{preferred.dtype} {tuple(preferred.shape)}"
        raise ValueError(f"preferred must be an integer [B] = [{b}] tensor, got {got}")
    if bool(((preferred < 0) | (preferred >= k)).any()):
        raise ValueError(f"preferred indices must lie in [0, K) = [0, {k})")
    if not 1 <= m <= k - 1:
        raise ValueError(
            f"num_negatives M = {m} must be in [1, K-1] = [1, {k - 1}] (K = {k} candidates, one preferred)"
        )
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if variant != "mc" and (steps != 1 or proposal_size is not None):
        raise ValueError(f"steps / proposal_size configure the 'mc' chain only, not variant {variant!r}")
    if proposal_size is None and steps > 1:
        raise ValueError(
            "steps > 1 needs proposal_size < K-1-M: with every candidate proposed, one step is already "
            "an exact draw from the kernel weights and further steps change nothing in distribution"
        )
    if proposal_size is not None and not 1 <= proposal_size < k - 1 - m:
        raise ValueError(f"proposal_size L = {proposal_size} must be in [1, K-1-M) = [1, {k - 1 - m})")
    eligible = torch.ones(b, k, dtype=torch.bool, device=policy_logps.device)
    eligible[torch.arange(b, device=policy_logps.device), preferred.to(policy_logps.device).long()] = False
    return eligible
