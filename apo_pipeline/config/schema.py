"""Top-level job configs: the sections every job shares plus one loop block per job."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from apo_pipeline.config.sections import (
    AlgorithmConfig,
    CheckpointConfig,
    ClusterConfig,
    DataConfig,
    EvalConfig,
    FaultConfig,
    GenerationConfig,
    JudgeConfig,
    LearnerConfig,
    ModelConfig,
    MonitoringConfig,
    Section,
    SyncConfig,
)

LOCAL_NUM_CPUS = 8  # logical CPUs of the local Ray that launch.init_ray starts when cluster.num_cpus is None


class ConfigError(ValueError):
    """A config problem, phrased as one line that names the key."""


class BaseJobConfig(Section):
    """What every job shares. Subclasses add `loop`."""

    name: str = "run"
    seed: int = 0
    deterministic: bool = False
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    sync: SyncConfig = Field(default_factory=SyncConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    fault: FaultConfig = Field(default_factory=FaultConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)

    @model_validator(mode="after")
    def _check_combinations(self) -> "BaseJobConfig":
        _check_common(self)
        return self


def _fail(key: str, message: str) -> None:
    raise ValueError(f"{key}: {message}")


def _check_common(cfg: BaseJobConfig) -> None:
    """Cross-field rules; each failure names the key it is about."""
    from apo_pipeline.losses import list_losses
    from apo_pipeline.losses.dispatch import loss_spec

    k = cfg.generation.num_candidates
    if k < 2:
        _fail("generation.n_per_temperature", f"K = {k} candidates per prompt; at least 2 are needed")
    if any(t <= 0 for t in cfg.generation.temperatures):
        _fail("generation.temperatures", "every temperature must be > 0")
    if cfg.algorithm.loss not in list_losses():
        _fail("algorithm.loss", f"unknown loss {cfg.algorithm.loss!r}; choose one of {', '.join(list_losses())}")
    allowed = sorted(loss_spec(cfg.algorithm.loss).options)
    for key in cfg.algorithm.loss_options:
        if key not in allowed:
            _fail(f"algorithm.loss_options.{key}", f"not an option of {cfg.algorithm.loss!r} (it takes: {', '.join(allowed) or 'none'})")
    if "bco_delta" in cfg.algorithm.loss_options:
        _fail("algorithm.loss_options.bco_delta", "BCO's delta is the running mean of the implicit rewards, kept by "
              "the learner (docs/algorithms.md); remove the key")
    _check_loss_options(cfg)
    m = cfg.algorithm.num_negatives
    if m > k - 1:
        _fail("algorithm.num_negatives", f"{m} negatives but only K-1 = {k - 1} non-preferred candidates")
    if cfg.algorithm.cdpo is not None:
        t1, t2 = cfg.algorithm.cdpo
        if not 0 <= t1 < t2:
            _fail("algorithm.cdpo", f"need 0 <= t1 < t2, got ({t1}, {t2})")
    _check_engine_reference(cfg)
    if getattr(getattr(cfg, "loop", None), "stream", False) and cfg.cluster.colocate and cfg.cluster.use_gpu:
        _fail("loop.stream", "needs the engines on their own GPUs: colocated engines sleep while the learner trains")
    if cfg.judge.backend == "llm" and not cfg.judge.model:
        _fail("judge.model", "the llm judge needs a model path")
    cl = cfg.cluster
    if not cl.use_gpu and cfg.model.dtype in ("bfloat16", "float16"):
        _fail("model.dtype", f"{cfg.model.dtype} needs cluster.use_gpu=true; CPU runs in float32")
    if not cl.use_gpu and cfg.sync.backend == "nccl":
        _fail("sync.backend", "nccl needs cluster.use_gpu=true")
    if cl.use_gpu and cl.num_gpus is not None:
        engines = cl.num_engines * cl.engine_tp
        judge = cl.judge_engines * cl.judge_tp if cfg.judge.backend == "llm" else 0
        need = max(engines, cl.learner_ranks) + judge if cl.colocate else engines + judge + cl.learner_ranks
        if need > cl.num_gpus:
            _fail("cluster.learner_ranks", f"placement needs {need} GPUs but cluster.num_gpus = {cl.num_gpus}")
    if not cl.use_gpu:
        need_cpu = _placement_cpus(cfg)
        if cl.num_cpus is not None and need_cpu > cl.num_cpus:
            _fail("cluster.learner_ranks", f"placement needs {need_cpu:g} CPUs but cluster.num_cpus = {cl.num_cpus}")
        # launch.resolve_config sets cluster.address to the cluster the job joins (--address / RAY_ADDRESS)
        if cl.num_cpus is None and cl.address is None and need_cpu > LOCAL_NUM_CPUS:
            _fail(
                "cluster.learner_ranks",
                f"placement needs {need_cpu:g} CPUs but a local Ray gets {LOCAL_NUM_CPUS} "
                "(set cluster.num_cpus, or cluster.address to join a cluster)",
            )


def _check_engine_reference(cfg: BaseJobConfig) -> None:
    """The engines hold the round-start weights, so their log-probs are pi_ref only when pi_ref is
    the round's start (APO always; OnMC-PO with algorithm.reference: round); offline MC-PO samples nothing."""
    if not cfg.algorithm.reference_from_engines:
        return
    job = getattr(cfg, "job", None)
    if job == "mcpo":
        _fail("algorithm.reference_from_engines", "offline MC-PO samples no candidates; remove the key")
    if job != "apo" and cfg.algorithm.reference != "round":
        _fail("algorithm.reference_from_engines", "needs algorithm.reference: round (after round 1 the engines no "
              "longer hold the initial policy)")


def _check_loss_options(cfg: BaseJobConfig) -> None:
    """The loss's own checks of algorithm.loss_options (ranges, choices), run on a one-pair batch now
    rather than at the first training step."""
    import torch

    from apo_pipeline.losses import preference_loss

    zero, one = torch.zeros(1), torch.ones(1)
    runtime = {"bco_delta": 0.0} if cfg.algorithm.loss == "bco" else {}  # passed by the learner
    try:
        preference_loss(cfg.algorithm.loss, zero, zero, zero, zero, beta=cfg.algorithm.beta, chosen_lengths=one,
                        rejected_lengths=one, **runtime, **cfg.algorithm.loss_options)
    except ValueError as exc:
        _fail("algorithm.loss_options", str(exc))


def _placement_cpus(cfg: BaseJobConfig) -> float:
    """Logical CPUs the placement groups reserve (engine/placement.py): one bundle of
    cluster.cpus_per_actor per learner rank, generation TP rank (unless colocated) and llm-judge TP rank."""
    cl = cfg.cluster
    bundles = cl.learner_ranks + (0 if cl.colocate else cl.num_engines * cl.engine_tp)
    if cfg.judge.backend == "llm":
        bundles += cl.judge_engines * cl.judge_tp
    return cl.cpus_per_actor * bundles


class StreamedLoop(Section):
    """Streamed rounds (docs/algorithms.md): generation, judge, reference log-probs and training overlap."""

    stream: bool = Field(
        False, description="overlap a round's stages by chunks of prompts (off: one stage after another; the "
        "algorithm experiments that would justify it as the default have not been run)"
    )
    stream_chunk: int = Field(16, ge=1, description="prompts per chunk of a streamed round")


class OnMCPOLoop(StreamedLoop):
    """Batched online MC-PO: total_steps split into `segments`, data regenerated at each segment start."""

    segments: int = Field(3, ge=1)
    total_steps: int | None = Field(
        None, ge=1, description="optimizer steps over all segments; None = one pass over the prompts "
        "(ceil(data.num_prompts / effective batch)), as the MC-PO paper computes them"
    )


class APOLoop(StreamedLoop):
    """Iterative APO: T iterations, E epochs each, extrapolation weight alpha (0 = iterative DPO)."""

    iterations: int = Field(3, ge=1)
    epochs: int = Field(1, ge=1)
    alpha: float = Field(0.3, description="momentum weight, in [0, 1)")

    @model_validator(mode="after")
    def _alpha_range(self) -> "APOLoop":
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"alpha: must be in [0, 1), got {self.alpha}")
        return self


class MCPOLoop(Section):
    """Offline MC-PO over a dataset with K candidates per prompt and a preferred index."""

    dataset: str = "builtin"
    dataset_format: Literal["candidates", "nectar", "trl", "ultrafeedback"] = Field(
        "candidates", description="the file's shape: {prompt, candidates, preferred}, Nectar ranked answers, TRL "
        "{prompt, chosen, rejected} (plain or conversational) or UltraFeedback scored completions (docs/algorithms.md)"
    )
    dataset_columns: dict[str, str] = Field(
        default_factory=dict, description="rename the format's fields, {field: the file's column}, e.g. {prompt: question}"
    )
    nectar_drop_ranks: list[int] = Field(
        default_factory=lambda: [2], description="nectar: ranks removed before training (the MC-PO paper drops rank 2)"
    )
    epochs: int = Field(1, ge=1)
    builtin_prompts: int = Field(64, ge=1, description="prompts of data.prompts the `builtin` dataset is sampled from")

    @model_validator(mode="after")
    def _columns(self) -> "MCPOLoop":
        from apo_pipeline.loops.dataset_formats import column_names

        try:
            column_names(self.dataset_format, self.dataset_columns)
        except ValueError as exc:
            raise ValueError(f"dataset_columns.{exc}") from None
        if 1 in self.nectar_drop_ranks:
            raise ValueError("nectar_drop_ranks: rank 1 is the preferred answer; it cannot be dropped")
        return self


class OnMCPOConfig(BaseJobConfig):
    name: str = "onmcpo"
    job: Literal["onmcpo"] = "onmcpo"
    loop: OnMCPOLoop = Field(default_factory=OnMCPOLoop)

    @field_validator("algorithm")
    @classmethod
    def _default_loss(cls, algorithm: AlgorithmConfig) -> AlgorithmConfig:
        """An algorithm.loss left unset is dpo for M = 1 negative and rnce for M > 1."""
        if algorithm.num_negatives > 1 and "loss" not in algorithm.model_fields_set:
            return algorithm.model_copy(update={"loss": "rnce"})
        return algorithm


class APOConfig(BaseJobConfig):
    name: str = "apo"
    job: Literal["apo"] = "apo"
    loop: APOLoop = Field(default_factory=APOLoop)

    @model_validator(mode="after")
    def _apo_loss(self) -> "APOConfig":
        if self.algorithm.loss not in ("dpo", "ipo", "sppo"):
            raise ValueError(f"algorithm.loss: iterative APO takes dpo, ipo or sppo, not {self.algorithm.loss!r}")
        if self.algorithm.reference != "round":  # the seed's loss is against pi_t, the iteration's start policy
            if "reference" in self.algorithm.model_fields_set:
                raise ValueError("algorithm.reference: iterative APO's reference is pi_t (the iteration's start); use round")
            self.algorithm = self.algorithm.model_copy(update={"reference": "round"})
        return self


class MCPOConfig(BaseJobConfig):
    name: str = "mcpo"
    job: Literal["mcpo"] = "mcpo"
    loop: MCPOLoop = Field(default_factory=MCPOLoop)


JOB_CONFIGS: dict[str, type[BaseJobConfig]] = {"onmcpo": OnMCPOConfig, "apo": APOConfig, "mcpo": MCPOConfig}
