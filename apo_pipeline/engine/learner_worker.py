"""One learner rank: a DeepSpeed engine over an HF causal LM, run as a Ray actor (`learner-<i>`).

`LearnerGroup` starts W of these and joins them into one DeepSpeed job (`setup`). After that every
method except `node_ip` / `free_port` is a collective: the group calls it on all ranks at once,
each with its own shard of the data. Forward passes are kept in lockstep (ZeRO-3 gathers the
parameters in every forward): a rank with fewer micro-batches than the others runs dummy ones.
Reference log-probs arrive with the data (`TrainGroup.ref_logps`); no reference model is held.
Reference weights are kept as named fp32 copies (`engine.weight_sets`), swapped in for the no-grad
passes that need them (`compute_logps(..., weights="reference")`).
"""

from __future__ import annotations

import inspect
import os
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import deepspeed
import deepspeed.comm as dist
import numpy as np
import ray
import torch
from deepspeed.accelerator import get_accelerator
from torch import Tensor
from transformers import AutoModelForCausalLM, AutoTokenizer

from apo_pipeline.config.sections import AlgorithmConfig, LearnerConfig, ModelConfig
from apo_pipeline.engine.batching import MicroBatch, collate, make_micro_batches, sequence_logps
from apo_pipeline.engine.buckets import PackedBucket, pack_bucket
from apo_pipeline.engine.ds_config import deepspeed_config, lr_scheduler_factory, training_dtype
from apo_pipeline.engine.dynamics_probe import DynamicsTargets, make_targets, probe
from apo_pipeline.engine.full_weights import extrapolate_masters_, gathered_buckets
from apo_pipeline.engine.preference_batch import (
    PreferenceBatch,
    batch_loss,
    batch_reward_sum,
    choose_negatives,
    has_refs,
    needs_policy_logps,
    preference_batches,
)
from apo_pipeline.engine.weight_sets import WeightSets
from apo_pipeline.losses.running_mean import RunningMean
from apo_pipeline.rollout import TrainGroup
from apo_pipeline.seeds import derive_seed

EXPORT_BUCKET_BYTES = 256 << 20
CLIENT_STATE_KEY = "apo_client_state"  # DeepSpeed returns its own entries beside the caller's
LEARNER_STATE_KEY = "apo_learner_state"  # the learner's own state (BCO's running delta), same on every rank
THETAHAT = "thetahat"  # APO's kept pre-extrapolation weights, thetahat_t (see `extrapolate`)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The MC kernel's seed at optimizer step `step` on `rank` (independent streams per pair)."""
    return derive_seed(seed, "mc-kernel", step, rank)


@dataclass
class StepReport:
    """One rank's share of a train step. `sums`: metric * groups over this rank's groups (so the
    group can average over all groups); grad_norm (pre-clipping) and lr are the same on every rank."""

    groups: int
    tokens: int
    grad_norm: float
    lr: float
    sums: dict[str, float] = field(default_factory=dict)


class LearnerWorker:
    """One DeepSpeed rank. Construct cheaply; `setup` loads the model and joins the job."""

    def __init__(
        self,
        model: ModelConfig,
        learner: LearnerConfig,
        *,
        use_gpu: bool,
        total_steps: int | None,
        seed: int,
        logp_batch_size: int,
    ) -> None:
        self.model_config = model
        self.learner = learner
        self.use_gpu = use_gpu
        self.total_steps = total_steps
        self.seed = seed
        self.logp_batch_size = logp_batch_size
        self.bco = RunningMean()
        self.targets: DynamicsTargets | None = None

    def node_ip(self) -> str:
        return ray.util.get_node_ip_address()

    def free_port(self) -> int:
        """A TCP port free on this node now (the rendezvous port of rank 0)."""
        with socket.socket() as sock:
            sock.bind(("", 0))
            return sock.getsockname()[1]

    def setup(self, master_addr: str, master_port: int, rank: int, world_size: int, local_rank: int) -> float:
        """Join the job, load the model from `model.path`, build the engine; returns the seconds taken."""
        start = time.perf_counter()
        path, remote = self.model_config.path, self.model_config.trust_remote_code
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"model.path: {path} is not an HF model directory (no config.json)")
        os.environ.update(
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_RANK=str(local_rank),
        )
        deepspeed.init_distributed(dist_backend="nccl" if self.use_gpu else "gloo")
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(get_accelerator().current_device_name())
        dtype = training_dtype(self.model_config, self.use_gpu)
        local = {"trust_remote_code": remote, "local_files_only": True}  # never the hub
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **local)
        self.tokenizer = AutoTokenizer.from_pretrained(path, **local)
        self.engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=deepspeed_config(self.learner, world_size=world_size, use_gpu=self.use_gpu, dtype=dtype),
            lr_scheduler=lr_scheduler_factory(self.learner, self.total_steps),
        )
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        self.dummy = collate([[self.pad_id]], [[self.pad_id]], [0], self.pad_id)
        self.keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.weights = WeightSets(self.engine.module)
        return time.perf_counter() - start

    # ---- forward passes -------------------------------------------------------------------

    def _lockstep(self, batches: list) -> Iterator:
        """`batches`, then None (= run a dummy batch) until every rank has run as many."""
        count = torch.tensor([len(batches)], device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        yield from batches
        for _ in range(int(count) - len(batches)):
            yield None

    def _logps(self, model: torch.nn.Module, batch: MicroBatch) -> Tensor:
        """Summed response log-probs [B] (float32) of `batch` under `model` (the engine or its module)."""
        inputs = {
            "input_ids": batch.input_ids.to(self.device),
            "attention_mask": batch.attention_mask.to(self.device),
            "use_cache": False,
        }
        if self.keeps_logits:
            inputs["logits_to_keep"] = batch.logits_to_keep
        return sequence_logps(model(**inputs).logits, batch)

    def compute_logps(
        self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], weights: str | None = None
    ) -> list[float]:
        """log pi(response | prompt) summed over response tokens (nats), in input order, no gradient;
        under the kept weights `weights` (e.g. "reference") when given, else the training weights."""
        batches = make_micro_batches(
            prompts, responses, self.logp_batch_size, self.pad_id, sort=self.learner.length_buckets
        )
        out = torch.zeros(len(prompts))
        self.engine.module.eval()
        with torch.no_grad(), self.weights.using(weights):
            for batch in self._lockstep(batches):
                logps = self._logps(self.engine.module, batch or self.dummy)
                if batch is not None:
                    out[batch.index] = logps.cpu()
        return out.tolist()

    def _candidate_logps(self, groups: Sequence[TrainGroup], needed: bool) -> list[list[float]] | None:
        """Current-policy log-probs of every candidate of every group, or None when not `needed`
        (the call still joins the forward passes of ranks that need them)."""
        pairs = [(g.prompt_ids, c) for g in groups for c in g.candidate_ids] if needed else []
        flat = self.compute_logps([p for p, _ in pairs], [c for _, c in pairs])
        if not needed:
            return None
        bounds = np.cumsum([0] + [len(g.candidate_ids) for g in groups])
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    # ---- training -------------------------------------------------------------------------

    def train_step(self, groups: list[TrainGroup], algorithm: AlgorithmConfig, total_groups: int) -> StepReport:
        """One optimizer step over this rank's `groups` (of `total_groups` over all ranks); refused
        while no learning-rate schedule is set (`new_iteration`, or a restored checkpoint).

        Negatives: the MC kernel on the current policy's no-grad log-probs of all K candidates,
        seeded by (seed, step, rank). Gradient forward on chosen + negatives only, in micro-batches
        of `learner.micro_batch_size` groups accumulated into one step; each micro-batch's mean loss
        is weighted by its share of `total_groups`, so the step's gradient is the mean over all groups.
        """
        if self.engine.lr_scheduler.lr_lambdas[0].total_steps is None:
            raise RuntimeError("no learning-rate schedule: call new_iteration(total_steps) before the first train step")
        step = self.engine.global_steps
        policy = self._candidate_logps(groups, needs_policy_logps(groups, algorithm))
        generator = torch.Generator().manual_seed(step_seed(self.seed, step, self.rank))
        negatives = choose_negatives(groups, policy, algorithm, generator)
        batches = preference_batches(
            groups, negatives, self.learner.micro_batch_size, self.pad_id, sort=self.learner.length_buckets
        )
        report = StepReport(groups=len(groups), tokens=0, grad_norm=0.0, lr=float(self.engine.get_lr()[0]))
        if groups:
            report.sums["mc/entropy"] = float(negatives.entropy.sum())
        self.engine.train()
        if self._dynamics_due(algorithm, step, batches, groups):
            report.sums.update({k: v * len(groups) for k, v in self._dynamics(batches[0], algorithm).items()})
        schedule = list(self._lockstep(batches))
        for index, batch in enumerate(schedule):
            self.engine.set_gradient_accumulation_boundary(index == len(schedule) - 1)
            loss = self._micro_step(batch, algorithm, step, total_groups, report)
            self.engine.backward(loss, scale_wrt_gas=False)
        unreduced_norm = self._module_grad_norm() if self.learner.zero_stage == 0 else None
        self.engine.step()
        self.weights.changed()
        norm = self.engine.get_global_grad_norm()
        report.grad_norm = float(norm if norm is not None else unreduced_norm)
        return report

    def _module_grad_norm(self) -> float:
        """L2 norm of the parameters' (rank-averaged) gradients: ZeRO-0 in fp32 has no optimizer
        wrapper that records it."""
        grads = [p.grad.float().norm() for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0

    def _micro_step(
        self,
        batch: PreferenceBatch | None,
        algorithm: AlgorithmConfig,
        step: int,
        total_groups: int,
        report: StepReport,
    ) -> Tensor:
        """The loss to backpropagate for one micro-batch (0 x a dummy forward for None). BCO: the
        micro-batch's rewards are folded into the running delta first (every rank, in the same
        order as the forward, so the collectives stay in lockstep)."""
        bco = algorithm.loss == "bco"
        if batch is None:
            loss = self._logps(self.engine, self.dummy).sum() * 0.0
            if bco:
                self._bco_delta(0.0, 0)
            return loss
        logps = self._logps(self.engine, batch.micro)
        extra = {"bco_delta": self._bco_delta(*batch_reward_sum(batch, logps, algorithm.beta))} if bco else {}
        out = batch_loss(batch, logps, algorithm, step, extra)
        report.tokens += batch.micro.num_tokens
        metrics = {**out.metrics, **({"bco/delta": extra["bco_delta"]} if bco else {})}
        for key, value in metrics.items():
            report.sums[key] = report.sums.get(key, 0.0) + value * batch.num_groups
        return out.loss * (batch.num_groups * self.world_size / total_groups)

    def _bco_delta(self, total: float, count: int) -> float:
        """BCO's delta: fold this rank's reward sum and count (all ranks summed) into the running
        mean of every implicit reward seen so far, and return it (TRL BCOTrainer's order)."""
        both = torch.tensor([float(total), float(count)], dtype=torch.float64, device=self.device)
        dist.all_reduce(both, op=dist.ReduceOp.SUM)
        return self.bco.update(float(both[0]), int(both[1]))

    def _all_ranks(self, value: float, op: dist.ReduceOp) -> float:
        tensor = torch.tensor([float(value)], device=self.device)
        dist.all_reduce(tensor, op=op)
        return float(tensor)

    def _dynamics_due(self, algorithm: AlgorithmConfig, step: int, batches: list, groups: list[TrainGroup]) -> bool:
        """Every `dynamics_every` steps, for pairs (M = 1) with reference log-probs on every rank."""
        every = algorithm.dynamics_every
        if not every or step % every or algorithm.num_negatives != 1:
            return False
        ready = bool(batches) and has_refs(groups, algorithm.loss)
        return bool(self._all_ranks(ready, dist.ReduceOp.MIN))

    def _dynamics(self, batch: PreferenceBatch, algorithm: AlgorithmConfig) -> dict[str, float]:
        """POS / NEG / TOT gradient norms, G against D' and loss shares on this rank's first
        micro-batch (`engine.dynamics_probe`)."""
        return probe(self.engine.module, self._logps, batch, algorithm.beta, self.targets, self.device)

    def set_dynamics_targets(self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> None:
        """D' of the dynamics probe: (prompt, response) token ids, the same on every rank."""
        self.targets = make_targets(prompts, responses, self.logp_batch_size, self.pad_id)

    def new_iteration(self, total_steps: int, reset_optimizer: bool) -> None:
        """Restart the learning-rate schedule (warm-up included) over `total_steps`; with
        `reset_optimizer`, zero the optimizer's moments and step counts (a fresh AdamW)."""
        optimizer = self.engine.basic_optimizer
        self.engine.lr_scheduler = lr_scheduler_factory(self.learner, total_steps)(optimizer)
        if reset_optimizer:
            for state in optimizer.state.values():
                for value in state.values():
                    if torch.is_tensor(value):
                        value.zero_()
            for group in optimizer.param_groups:
                if "step" in group:
                    group["step"] = 0

    # ---- weights --------------------------------------------------------------------------

    def keep_weights(self, name: str) -> None:
        """Keep this rank's share of the current fp32 master weights on CPU under `name`."""
        self.weights.keep(name)

    def drop_weights(self, name: str) -> None:
        """Forget the kept weights `name`."""
        self.weights.drop(name)

    def snapshot_weights(self) -> None:
        """Keep the current weights as APO's thetahat_t (kept weights `thetahat`)."""
        self.weights.keep(THETAHAT)

    def extrapolate(self, alpha: float) -> None:
        """APO: theta = thetahat + alpha (thetahat - snapshot) on parameters and fp32 masters; the
        pre-extrapolation weights (thetahat_{t+1}) become the kept `thetahat` of the next call."""
        if THETAHAT not in self.weights:
            raise RuntimeError("extrapolate: no snapshot; call snapshot_weights() at the start of the first iteration")
        before = self.weights.version
        self.weights.put(THETAHAT, extrapolate_masters_(self.engine.module, self.weights.take(THETAHAT), alpha), before)
        self.weights.changed()

    def init_nccl_sender(self, weight_sync: ray.actor.ActorHandle, master_address: str, master_port: int, bucket_bytes: int) -> None:
        """GPU: join vLLM's NCCL weight-transfer group (rank 0 sends; every rank gathers)."""
        from apo_pipeline.engine.nccl_source import ZeroWeightSource
        from apo_pipeline.engine.weight_sync import nccl_sender

        self.nccl_source = ZeroWeightSource(self.engine.module, bucket_bytes)
        self.nccl = nccl_sender(
            weight_sync, rank=self.rank, master_address=master_address, master_port=master_port, source=self.nccl_source
        )

    def send_weights_nccl(self, weights: str | None = None) -> tuple[int, int]:
        """GPU: one full sync through the group made by `init_nccl_sender` of the training weights, or
        of the kept weights `weights`; (buckets gathered, bytes sent)."""
        with self.weights.using(weights):
            self.nccl.send_weights()
        return self.nccl_source.buckets, self.nccl_source.nbytes

    def stream_weight_buckets(self, bucket_bytes: int, weights: str | None = None) -> Iterator[PackedBucket]:
        """Rank 0 only, as a Ray streaming generator: the full weights (the kept weights `weights` when
        given) as `PackedBucket`s of at most `bucket_bytes` (one parameter may exceed it), every
        parameter once, in order. The actor runs nothing else until the last bucket is taken, so the
        swap of `weights` cannot meet a train step."""
        with self.weights.using(weights):
            for bucket in gathered_buckets(self.engine.module, bucket_bytes):
                yield pack_bucket(bucket)

    def join_weight_gathers(self, bucket_bytes: int, weights: str | None = None) -> int:
        """Ranks > 0 during `stream_weight_buckets` on rank 0: join each bucket's gather (of the same
        `weights`); returns the count."""
        with self.weights.using(weights):
            return sum(1 for _ in gathered_buckets(self.engine.module, bucket_bytes))

    def export_hf(self, directory: str, weights: str | None = None) -> None:
        """Rank 0 writes the full weights (safetensors, model dtype), config and tokenizer to `directory`;
        the kept weights `weights` (e.g. APO's "thetahat") when given, else the training weights."""
        state = {}
        with self.weights.using(weights):
            for bucket in gathered_buckets(self.engine.module, EXPORT_BUCKET_BYTES):
                if self.rank == 0:
                    state.update({name: t.detach().to("cpu", copy=True) for name, t in bucket.items()})
        if self.rank == 0:
            self.engine.module.save_pretrained(directory, state_dict=state)
            self.tokenizer.save_pretrained(directory)
        dist.barrier()

    # ---- checkpoints ----------------------------------------------------------------------

    def save_checkpoint(self, directory: str, tag: str, client_state: dict) -> None:
        """DeepSpeed checkpoint `directory/tag` (every ZeRO shard, optimizer, scheduler, `client_state`,
        the learner's own state), plus this rank's share of every kept weight set."""
        learner_state = {"bco": self.bco.state()}
        self.engine.save_checkpoint(
            directory, tag=tag, client_state={CLIENT_STATE_KEY: client_state, LEARNER_STATE_KEY: learner_state},
            save_latest=False,
        )
        self.weights.save(Path(directory) / tag, self.rank, self.world_size)
        dist.barrier()

    def load_checkpoint(self, directory: str, tag: str) -> dict:
        """Restore `directory/tag` (with the kept weight sets and the learner state it holds);
        returns the client state."""
        path, client_state = self.engine.load_checkpoint(directory, tag=tag)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} under {directory}")
        self.weights.changed()
        self.weights.load(Path(directory) / tag, self.rank, self.world_size)
        self.bco = RunningMean.from_state(client_state.get(LEARNER_STATE_KEY, {}).get("bco"))
        return client_state[CLIENT_STATE_KEY]
