"""The DeepSpeed config dict and learning-rate schedule of the learner group (no Ray, no DeepSpeed import).

CPU: fp32, gloo. GPU: bf16 with fp32 master weights, NCCL. The optimizer is torch's AdamW through
DeepSpeed's `torch_adam` with torch's fused kernel (CPU and GPU alike; on CPU it cut a learner
step by ~19% against the per-tensor loop, docs/results.md), so no DeepSpeed op is compiled at start. The
schedule is a `torch.optim.lr_scheduler.LambdaLR` over `LRSchedule`, handed to
`deepspeed.initialize(lr_scheduler=...)`: DeepSpeed steps it once per optimizer step and saves /
restores it, the schedule's own settings included, in its checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from apo_pipeline.config.sections import LearnerConfig, ModelConfig

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
NEVER_PRINT = 10**12


def training_dtype(model: ModelConfig, use_gpu: bool) -> torch.dtype:
    """`model.dtype`, with `auto` = bf16 on GPU and fp32 on CPU; fp16 training is not supported."""
    if model.dtype == "auto":
        return torch.bfloat16 if use_gpu else torch.float32
    if model.dtype == "float16":
        raise ValueError("model.dtype: float16 training is not supported by the learner; use bfloat16 or float32")
    return getattr(torch, model.dtype)


def deepspeed_config(learner: LearnerConfig, *, world_size: int, use_gpu: bool, dtype: torch.dtype) -> dict:
    """DeepSpeed config for `world_size` ranks training in `dtype` (bf16 keeps fp32 master weights).
    Units: batch sizes in training examples (groups)."""
    zero: dict = {"stage": learner.zero_stage, "contiguous_gradients": True, "overlap_comm": use_gpu}
    if learner.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    return {
        "train_micro_batch_size_per_gpu": learner.micro_batch_size,
        "gradient_accumulation_steps": learner.grad_accum,
        "train_batch_size": learner.micro_batch_size * learner.grad_accum * world_size,
        "gradient_clipping": learner.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": learner.lr,
                "betas": list(ADAM_BETAS),
                "eps": ADAM_EPS,
                "weight_decay": learner.weight_decay,
                "torch_adam": True,
                "fused": True,
            },
        },
        "steps_per_print": NEVER_PRINT,
        "wall_clock_breakdown": False,
    }


@dataclass
class LRSchedule:
    """Multiplier of the peak learning rate at optimizer step s (0-based).

    Warm-up: s / warmup_steps for s < warmup_steps (0 at the first step). Then `constant`: 1;
    `linear`: (total - s) / (total - warmup) down to 0 at s = total; `cosine`:
    (1 + cos(pi * progress)) / 2 with progress = (s - warmup) / (total - warmup), clamped to [0, 1].
    `total_steps` None: not set yet; the loop sets it (`new_iteration`) before the first step, or a
    checkpoint restores it, and a train step refuses to run without it.
    """

    kind: str
    warmup_steps: int
    total_steps: int | None

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "linear", "cosine"):
            raise ValueError(f"learner.lr_schedule: unknown schedule {self.kind!r}")
        if self.total_steps is not None and self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, (self.total_steps or 1) - self.warmup_steps))
        if self.kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_scheduler_factory(
    learner: LearnerConfig, total_steps: int | None
) -> Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LambdaLR]:
    """What `deepspeed.initialize(lr_scheduler=...)` calls with the optimizer it built."""
    schedule = LRSchedule(learner.lr_schedule, learner.warmup_steps, total_steps)
    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
