"""Config sections shared by every job. Each is a pydantic model that forbids unknown keys.

Units: lengths in tokens, sizes in MiB, times in seconds, learning rates per optimizer step.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    """Base of every config block: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    """The policy. `builtin:tiny` builds the local tiny Qwen2 model; `builtin:smollm2` / `gguf:PATH` convert a GGUF
    file once into an HF directory under .cache/ (docs/models.md); anything else is an HF model directory."""

    path: str = Field(
        "builtin:tiny",
        description="`builtin:tiny`, `builtin:smollm2` (needs `make smollm2`), `gguf:PATH` or a local HF model directory (never downloaded)",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int = Field(128, ge=8)
    trust_remote_code: bool = False


class DataConfig(Section):
    """Prompt sources: `builtin`, a JSONL file (`prompt` field), a Parquet file or a `datasets` directory."""

    prompts: str = Field(
        "builtin",
        description="`builtin` (digit reversal), `builtin:instructions` (real-text constraints), a .jsonl / .parquet file or a datasets directory",
    )
    eval_prompts: str = "builtin"
    num_prompts: int | None = Field(64, ge=1, description="train prompts used (None = all)")
    num_eval_prompts: int = Field(32, ge=1)
    on_error: Literal["raise", "skip"] = Field("raise", description="a malformed prompt row: stop naming file and row, or skip and count")
    chat: bool = Field(False, description="send plain-text prompts to the policy as a user turn of its tokenizer's chat template")
    max_prompt_tokens: int = Field(64, ge=1)
    overlong: Literal["skip", "truncate"] = Field("skip", description="prompts over max_prompt_tokens: skipped or left-truncated (counted)")


class GenerationConfig(Section):
    """Sampling of K = n_per_temperature * len(temperatures) candidates per prompt."""

    temperatures: list[float] = Field(default_factory=lambda: [0.6, 0.8, 1.0])
    n_per_temperature: int = Field(2, ge=1)
    max_tokens: int = Field(16, ge=1)
    top_p: float = Field(1.0, gt=0.0, le=1.0)

    @property
    def num_candidates(self) -> int:
        return self.n_per_temperature * len(self.temperatures)


class JudgeConfig(Section):
    """`reward`: Bradley-Terry over a reward function; `llm`: an instruct model read through label log-probs."""

    backend: Literal["reward", "llm"] = Field("reward", description="`reward`: Bradley-Terry over reward_fn; `llm`: judge.model on vLLM")
    reward_fn: str = Field(
        "builtin", description="`builtin` (the synthetic task's r*), `builtin:constraints` (fraction of the prompt's constraints met) or `module:function`"
    )
    bt_scale: float = Field(8.0, gt=0.0, description="logit scale of r* differences")
    mode: Literal["prob", "sample"] = Field(
        "prob", description="reward judge: the exact P(a>b), or a seeded Bernoulli draw of it (a noisy, human-like judge)"
    )
    model: str | None = Field(None, description="the llm judge's model: an HF directory, `builtin:smollm2` or `gguf:PATH`")
    chat: bool | None = Field(
        None, description="render each comparison as a user turn of the judge tokenizer's chat template; None = when it has one"
    )
    template: str = (
        "Which response answers the prompt better?\nPrompt: {prompt}\n"
        "Response A: {a}\nResponse B: {b}\nAnswer with A or B. Answer:"
    )
    labels: tuple[str, str] = Field(
        ("A", "B"), description="verdict tokens for a / b; the judge probes them with and without a leading space at start-up"
    )
    both_orders: bool = True
    max_retries: int = Field(1, ge=0)
    max_model_len: int = Field(512, ge=16)
    gpu_memory_utilization: float | None = Field(
        None, gt=0.0, le=1.0, description="GPU memory share of each llm-judge engine (None = cluster.gpu_memory_utilization)"
    )


class AlgorithmConfig(Section):
    """The training objective: a loss of `apo_pipeline.losses` and how negatives are drawn."""

    loss: str = Field("dpo", description="a name of apo_pipeline.losses.list_losses(); OnMC-PO: rnce when unset and num_negatives > 1")
    beta: float = Field(0.1, gt=0.0, description="KL weight of the implicit reward beta*log(pi/pi_ref); also the MC kernel's")
    loss_options: dict[str, float | bool | str] = Field(
        default_factory=dict, description="the loss's own options (docs/algorithms.md), e.g. {label_smoothing: 0.1}"
    )
    negatives: Literal["mc", "random", "max", "min"] = Field(
        "mc", description="negative sampler: MC kernel, uniform (RNCE), argmax or argmin of the kernel weights"
    )
    num_negatives: int = Field(1, ge=1, description="M negatives per prompt; pairwise losses average over the M pairs")
    mc_steps: int = Field(1, ge=1, description="MC chain length (docs/algorithms.md)")
    cdpo: tuple[int, int] | None = Field(None, description="(t1, t2) of the cDPO schedule, None = off")
    cdpo_shape: Literal["linear", "phases"] = Field(
        "linear", description="cDPO between t1 and t2: `linear` cross-fade from POS only to NEG only, or `phases`: "
        "no NEG before t1, plain DPO between, no POS from t2 (docs/algorithms.md)"
    )
    dynamics_every: int = Field(
        0, ge=0, description="every N steps log the POS/NEG gradient norms, G against the last evaluation's greedy "
        "responses and the loss share by weight tercile (0 = off; docs/algorithms.md)"
    )
    reference: Literal["initial", "round"] = Field(
        "initial", description="OnMC-PO's pi_ref: the starting policy (`initial`, the MC-PO paper's instruct setup) or "
        "each segment's start policy (`round`); APO always uses pi_t (docs/algorithms.md)"
    )
    reference_from_engines: bool = Field(
        False, description="log pi_ref of each candidate from the raw log-probs the generation engines return while "
        "sampling (they hold the round-start weights) instead of a learner pass; needs reference: round (docs/algorithms.md)"
    )


class LearnerConfig(Section):
    """DeepSpeed learner group. Effective batch = micro_batch_size * grad_accum * cluster.learner_ranks."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    lr: float = Field(5e-5, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    micro_batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, gt=0.0)
    length_buckets: bool = True


class SyncConfig(Section):
    """Weight sync learner -> engines through vLLM's weight-transfer API."""

    backend: Literal["auto", "cpu", "nccl"] = "auto"
    bucket_mb: float = Field(64.0, gt=0.0)


class ClusterConfig(Section):
    """Placement: how many actors of each role and what each holds."""

    address: str | None = Field(None, description="Ray address; None = the job's cluster or a local one")
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs of a local Ray (None = 8)")
    num_gpus: int | None = Field(None, ge=0, description="GPUs available, checked against the placement")
    use_gpu: bool = False
    num_engines: int = Field(1, ge=1)
    engine_tp: int = Field(1, ge=1)
    judge_engines: int = Field(1, ge=1)
    judge_tp: int = Field(1, ge=1)
    learner_ranks: int = Field(1, ge=1)
    cpus_per_actor: float = Field(1.0, gt=0.0)
    colocate: bool = False
    kv_cache_gib: float = Field(0.5, gt=0.0, description="VLLM_CPU_KVCACHE_SPACE per engine on CPU")
    gpu_memory_utilization: float = Field(0.4, gt=0.0, le=1.0)


class EvalConfig(Section):
    """Held-out evaluation: mean latent reward and win-rate against the starting policy."""

    every: int = Field(1, ge=0, description="evaluate every N segments/iterations (0 = only at the end)")
    greedy: bool = True
    sampled_temperature: float = Field(1.0, gt=0.0)


class CheckpointConfig(Section):
    """Checkpoints under <run_dir>/checkpoints; LATEST names the newest complete one."""

    enabled: bool = True
    keep_last: int = Field(2, ge=1)
    save_hf: bool = True
    every_steps: int = Field(0, ge=0, description="also checkpoint every N optimizer steps inside a round (0 = only after each round)")


class FaultConfig(Section):
    """What the job does when an actor dies (docs/operations.md, failures)."""

    actor_restarts: int = Field(3, ge=0, description="Ray restarts of each generation / judge actor; their in-flight requests are re-sent")
    job_restores: int = Field(2, ge=0, description="times the job rebuilds its actors from the last checkpoint after a learner (or other unrecoverable) actor death")


class MonitoringConfig(Section):
    """Where metrics go besides metrics.jsonl, and what the terminal shows."""

    ray_metrics: bool = True
    tensorboard: bool = False
    progress: bool = True
    console: Literal["quiet", "verbose"] = Field(
        "quiet",
        description="quiet: vLLM / DeepSpeed / Ray output goes to <run>/logs/<actor>.log and the terminal shows a "
        "live progress line per stage and a line per evaluation; verbose: everything on the terminal",
    )
    wandb: bool = Field(False, description="also log to Weights & Biases (needs the `wandb` extra)")
    wandb_mode: Literal["offline", "online"] = Field(
        "offline", description="offline: files under <run>/wandb, uploaded later with `wandb sync`; online needs a login"
    )
    wandb_project: str = "apo-pipeline"
