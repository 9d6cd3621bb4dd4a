"""One derivation for every random stream of a run: `derive_seed(run seed, stream name, *indices)`.

A stream is named (`"generate"`, `"batches"`, `"mc-kernel"`, ...) and indexed (round, step, rank,
prompt, ...). Its seed is a keyed hash (BLAKE2b) of all three, so runs with different seeds share
no stream: unlike `seed * 1000 + round`, where seed 0 round 1000 is seed 1 round 0, no two
(seed, name, indices) tuples map to the same value except by a 2^-63 accident, and every stream of
one seed differs from every stream of another. Variants of an experiment that share a run seed
share its streams (common random numbers), which is what makes their paired comparison sharper.

The value is a non-negative int below 2^63: accepted by `torch.Generator.manual_seed`,
`numpy.random.default_rng`, `random.Random` and vLLM's per-request `SamplingParams.seed` (which
seeds a torch generator). It is NOT meant for `numpy.random.seed` (32 bits).
"""

from __future__ import annotations

import hashlib

SEED_BITS = 63
STREAMS = (
    "generate",  # the pool's sampling of one round (index: round)
    "request",  # one candidate of one prompt (indices: prompt, temperature, sample); under a "generate" seed
    "rank-ties",  # the judge's coin for exact ties in the iterative ranking (index: round)
    "pairs",  # APO's uniformly drawn loser per prompt (index: iteration)
    "batches",  # the per-step batches of one round (index: round)
    "stream-batches",  # one step's batch of a streamed round (indices: round, step in the round)
    "mc-kernel",  # the MC kernel's negatives (indices: global step, learner rank)
    "eval",  # the held-out evaluation's sampled responses (no index: the same at every evaluation)
    "reward-judge",  # the reward judge's Bernoulli draw in mode `sample` (indices: prompt, a, b)
)


def derive_seed(seed: int, stream: str, *indices: object) -> int:
    """The seed of stream `stream` at `indices` of a run with seed `seed` (an int in [0, 2^63)).

    `indices` are ints or strings (a prompt, a response); they are hashed through their `repr`,
    so `1` and `"1"` differ. `stream` must be one of STREAMS (a typo is a ValueError, not a silently
    new stream)."""
    if stream not in STREAMS:
        raise ValueError(f"derive_seed: unknown stream {stream!r}; known: {', '.join(STREAMS)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"derive_seed: the run seed must be an int, got {seed!r}")
    key = repr((int(seed), stream, *indices)).encode("utf-8")
    digest = hashlib.blake2b(key, digest_size=8, person=b"apo-seed").digest()
    return int.from_bytes(digest, "little") >> (64 - SEED_BITS)
