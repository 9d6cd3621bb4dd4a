"""The learner group, driver side: W `LearnerWorker` actors (`learner-<i>`) forming one DeepSpeed job.

It places the ranks with `Placement` as one fail-fast `WorkerGroup` (no restarts: a dead rank
breaks the collective, and the job restores from a checkpoint), sets up the rendezvous
(MASTER_ADDR = rank 0's node IP, a port free there), shards data across ranks by length
(`batching.shard_indices`), fans every call out to all ranks at once (they are collectives) and
gathers the results in input order.
Validation happens here, before any rank starts a collective, so a bad input fails fast with a
message naming the row instead of leaving the other ranks waiting.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray
from ray.actor import ActorHandle

from apo_pipeline.config.sections import AlgorithmConfig, LearnerConfig, ModelConfig
from apo_pipeline.engine.batching import shard_indices
from apo_pipeline.engine.learner_worker import LearnerWorker, StepReport
from apo_pipeline.engine.placement import Placement
from apo_pipeline.engine.preference_batch import validate_groups
from apo_pipeline.engine.worker_group import WorkerGroup, gather
from apo_pipeline.rollout import TrainGroup

Sequences = Sequence[tuple[Sequence[int], Sequence[int]]]


class LearnerGroup:
    """Policy training on W ranks: log-probs, train steps, checkpoints, HF export, APO, weights.

    `total_steps`: optimizer steps the learning-rate schedule spans; None (what the loops pass):
    set by `new_iteration` before the first step (per APO iteration, once for OnMC-PO and MC-PO). `logp_batch_size`: sequences per no-grad forward (default 2 x micro batch).
    """

    def __init__(
        self,
        model: ModelConfig,
        learner: LearnerConfig,
        algorithm: AlgorithmConfig,
        placement: Placement,
        *,
        total_steps: int | None = None,
        seed: int = 0,
        logp_batch_size: int | None = None,
    ) -> None:
        cluster = placement.cluster
        self.algorithm = algorithm
        self.world_size = cluster.learner_ranks
        env = {} if cluster.use_gpu else {"DS_ACCELERATOR": "cpu"}
        self.group = WorkerGroup(
            ray.remote(LearnerWorker),
            [placement.options("learner", i, env_vars=env) for i in range(self.world_size)],
            model,
            learner,
            use_gpu=cluster.use_gpu,
            total_steps=total_steps,
            seed=seed,
            logp_batch_size=logp_batch_size or 2 * learner.micro_batch_size,
            fail_fast=True,
        )
        try:
            self.init_seconds = self._rendezvous(cluster.use_gpu)
        except Exception:
            self.shutdown()
            raise

    @property
    def ranks(self) -> list[ActorHandle]:
        """The rank actors, `learner-<i>` at index i."""
        return self.group.workers

    def _rendezvous(self, use_gpu: bool) -> list[float]:
        """Join the ranks into one job at rank 0's node IP and a port free there; the setup seconds per rank."""
        ips = ray.get([rank.node_ip.remote() for rank in self.ranks])
        port = ray.get(self.ranks[0].free_port.remote())
        # On GPU each actor sees only its own device (Ray sets CUDA_VISIBLE_DEVICES): local rank 0.
        local = [0 if use_gpu else ips[:i].count(ip) for i, ip in enumerate(ips)]
        return self.group.call_each("setup", [(ips[0], port, i, self.world_size, local[i]) for i in range(self.world_size)])

    def _all(self, method: str, *args: Any) -> list[Any]:
        """Call `method(*args)` on every rank at once; the results in rank order."""
        return self.group.call(method, *args)

    def compute_logps(self, groups: Sequence[TrainGroup], weights: str | None = None) -> list[list[float]]:
        """Per-candidate summed log-probs (nats) without gradient: one list of K values per group, in
        candidate order, groups in input order; under the current policy or, with `weights`, under
        those kept weights (`keep_weights`; swapped in and out on the ranks)."""
        pairs = [(g.prompt_ids, c) for g in groups for c in g.candidate_ids]
        for i, (prompt, response) in enumerate(pairs):
            if not prompt or not response:
                raise ValueError(f"sequence {i}: empty {'prompt' if not prompt else 'response'} token ids")
        shards = shard_indices([len(p) + len(r) for p, r in pairs], self.world_size)
        results = self.group.call_each(
            "compute_logps",
            [([pairs[i][0] for i in shard], [pairs[i][1] for i in shard], weights) for shard in shards],
        )
        flat = gather(shards, results, len(pairs))
        bounds = np.cumsum([0] + [len(g.candidate_ids) for g in groups])
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def train_step(
        self, groups: Sequence[TrainGroup], algorithm: AlgorithmConfig | None = None
    ) -> dict[str, float]:
        """One optimizer step on `groups` (one effective batch, split across the ranks).

        Returns metrics averaged over all groups: loss, rewards/chosen, rewards/rejected, margin,
        accuracy (and loss-specific ones), mc/entropy (nats), dyn/* every `dynamics_every` steps
        (per-rank first micro-batch, averaged); grad_norm (before clipping), lr (of this step);
        perf/step_s, perf/pairs_per_s (groups per second), perf/tokens_per_s (gradient-pass tokens).
        """
        algorithm = algorithm or self.algorithm
        validate_groups(groups, algorithm)
        loads = [len(g.prompt_ids) * len(g.candidate_ids) + sum(map(len, g.candidate_ids)) for g in groups]
        shards = shard_indices(loads, self.world_size)
        start = time.perf_counter()
        reports = self.group.call_each("train_step", [([groups[i] for i in shard], algorithm, len(groups)) for shard in shards])
        return merge_reports(reports, time.perf_counter() - start)

    def new_iteration(self, total_steps: int, reset_optimizer: bool = True) -> None:
        """Start an APO iteration: restart the LR schedule (with warm-up) over `total_steps`; with
        `reset_optimizer`, a fresh AdamW state."""
        self._all("new_iteration", total_steps, reset_optimizer)

    def keep_weights(self, name: str) -> None:
        """Keep the current weights under `name` (fp32 on CPU, 1/W per rank) for `compute_logps` /
        `export_hf`; checkpoints hold every kept set."""
        self._all("keep_weights", name)

    def drop_weights(self, name: str) -> None:
        """Forget the kept weights `name`."""
        self._all("drop_weights", name)

    def set_dynamics_targets(self, pairs: Sequences) -> None:
        """D' of the gradient-dynamics probe: (prompt_ids, response_ids) pairs, sent to every rank."""
        self._all("set_dynamics_targets", [p for p, _ in pairs], [r for _, r in pairs])

    def snapshot_weights(self) -> None:
        """Keep the current fp32 master weights on CPU (spread over the ranks) as thetahat_t."""
        self._all("snapshot_weights")

    def extrapolate(self, alpha: float) -> None:
        """APO: theta = thetahat + alpha (thetahat - snapshot), masters included; thetahat becomes the snapshot."""
        self._all("extrapolate", alpha)

    def save_checkpoint(self, directory: str, tag: str, client_state: dict | None = None) -> None:
        """DeepSpeed checkpoint `directory/tag`: every ZeRO shard, optimizer, scheduler, `client_state`
        (JSON-like), the learner state (BCO's running delta) and every kept weight set."""
        self._all("save_checkpoint", directory, tag, client_state or {})

    def load_checkpoint(self, directory: str, tag: str) -> dict:
        """Restore `directory/tag`; returns the client state saved with it."""
        return self._all("load_checkpoint", directory, tag)[0]

    def export_hf(self, directory: str, weights: str | None = None) -> None:
        """An HF model directory (safetensors of the full weights, config, tokenizer) at `directory`:
        the training weights, or the kept weights `weights`."""
        self._all("export_hf", directory, weights)

    def shutdown(self, wait: bool = True) -> None:
        """Kill the rank actors; with `wait`, return once their names are free again."""
        self.group.shutdown(wait)


def merge_reports(reports: Sequence[StepReport], seconds: float) -> dict[str, float]:
    """Group-weighted means of the ranks' metric sums, plus grad_norm, lr and throughput over `seconds`."""
    total = sum(r.groups for r in reports)
    keys = sorted({key for r in reports for key in r.sums})
    metrics = {key: sum(r.sums.get(key, 0.0) for r in reports) / total for key in keys}
    metrics.update(
        {
            "grad_norm": reports[0].grad_norm,
            "lr": reports[0].lr,
            "perf/step_s": seconds,
            "perf/pairs_per_s": total / seconds,
            "perf/tokens_per_s": sum(r.tokens for r in reports) / seconds,
        }
    )
    return metrics
