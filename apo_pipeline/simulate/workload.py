"""What one round does (`RoundWorkload`), on which actors (`Layout`), in which order (`Schedule`).

A round is an OnMC-PO segment or an APO iteration: generate -> judge -> reference log-probs ->
train -> sync, then evaluation and a checkpoint. `workload_from_config` derives the sizes from a
job config (a plain mapping, as in a run's config.yaml), `layout_from_config` the actor counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

ROLES = ("generation", "judge", "learner", "driver")
Mode = Literal["sequential", "streamed"]


@dataclass(frozen=True)
class RoundWorkload:
    """The work of one round; counts are totals over the round's prompts.

    prompts: P prompts sampled; candidates: sequences sampled (P x K); judge_requests: ordered
    comparisons asked; ref_sequences: sequences whose reference log-prob is computed; steps: S
    optimizer steps of `batch` pairs each; eval_prompts: held-out prompts evaluated after the
    round (0 = no evaluation); eval_judge_requests: the judge's comparisons of that evaluation;
    checkpoint: whether the round ends with one.
    """

    prompts: int
    candidates: int
    judge_requests: int
    ref_sequences: int
    steps: int
    batch: float
    eval_prompts: int = 0
    eval_judge_requests: int = 0
    checkpoint: bool = True

    def __post_init__(self) -> None:
        if self.prompts < 1:
            raise ValueError(f"RoundWorkload.prompts: need >= 1, got {self.prompts}")
        for name in ("candidates", "judge_requests", "ref_sequences", "steps", "eval_prompts", "eval_judge_requests"):
            if getattr(self, name) < 0:
                raise ValueError(f"RoundWorkload.{name}: negative ({getattr(self, name)})")
        if self.steps and self.batch <= 0:
            raise ValueError(f"RoundWorkload.batch: need > 0 with {self.steps} steps, got {self.batch}")


@dataclass(frozen=True)
class Layout:
    """Actors and GPUs per role.

    judges: judges that actually run; judges_reserved: judge engines the placement reserves (today
    only `judge-0` runs whatever `cluster.judge_engines` says; a judge pool runs all of them).
    colocate: generation engines share the learner's GPUs and sleep while it works (one of the two
    at a time; `switch_s` seconds per sleep or wake). cores: CPU cores all actors share (a CPU
    machine), None when each role has its own hardware; role_cores: the cores a role's pool keeps
    busy while it works.
    """

    engines: int = 1
    engine_tp: int = 1
    judges: int = 1
    judges_reserved: int = 1
    judge_tp: int = 1
    learner_ranks: int = 1
    colocate: bool = False
    switch_s: float = 0.0
    cores: float | None = None
    role_cores: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("engines", "engine_tp", "judges", "judge_tp", "learner_ranks"):
            if getattr(self, name) < 1:
                raise ValueError(f"Layout.{name}: need >= 1, got {getattr(self, name)}")
        if not 1 <= self.judges <= self.judges_reserved:
            raise ValueError(f"Layout.judges: {self.judges} running of {self.judges_reserved} reserved")
        if self.cores is not None and self.cores <= 0:
            raise ValueError(f"Layout.cores: need > 0, got {self.cores}")
        unknown = sorted(set(self.role_cores) - set(ROLES))
        if unknown:
            raise ValueError(f"Layout.role_cores: unknown role(s) {unknown}; expected {', '.join(ROLES)}")

    def actors(self, role: str) -> int:
        """Actors that share one call of `role`'s work."""
        return {"generation": self.engines, "judge": self.judges, "learner": self.learner_ranks}.get(role, 1)

    def gpus(self, role: str) -> int:
        """GPUs reserved for `role` (colocated generation counts none: it uses the learner's)."""
        if role == "generation":
            return 0 if self.colocate else self.engines * self.engine_tp
        if role == "judge":
            return self.judges_reserved * self.judge_tp
        if role == "learner":
            return max(self.engines, self.learner_ranks) if self.colocate else self.learner_ranks
        return 0

    def busy_gpus(self, role: str) -> int:
        """GPUs working while `role` works."""
        return {"generation": self.engines * self.engine_tp, "judge": self.judges * self.judge_tp,
                "learner": self.learner_ranks}.get(role, 0)

    def demand(self, roles: tuple[str, ...]) -> float:
        """CPU cores a task on `roles` keeps busy (the largest of its roles': a task on two roles,
        the weight sync, works on one side at a time)."""
        return max(self.role_cores.get(r, 1.0) for r in roles)

    def speed(self, demand: float) -> float:
        """Fraction of full speed when tasks demanding `demand` cores in all run at once."""
        return 1.0 if self.cores is None or demand <= self.cores else self.cores / demand

    @property
    def total_gpus(self) -> int:
        return sum(self.gpus(r) for r in ROLES)


@dataclass(frozen=True)
class Schedule:
    """sequential: every stage after the previous one; streamed (docs STREAMING.md): chunks of
    `chunk` prompts flow generate -> judge -> reference -> train, train steps unlocked in
    proportion to the prompts ready. ref_from_engines: log pi_ref comes free with the samples."""

    mode: Mode = "sequential"
    chunk: int | None = None
    ref_from_engines: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("sequential", "streamed"):
            raise ValueError(f"Schedule.mode: expected sequential or streamed, got {self.mode!r}")
        if self.chunk is not None and self.chunk < 1:
            raise ValueError(f"Schedule.chunk: need >= 1 prompts, got {self.chunk}")

    def chunks(self, prompts: int) -> list[int]:
        """Prompts per chunk, in order (one chunk in sequential mode or without a chunk size)."""
        if self.mode == "sequential" or self.chunk is None or self.chunk >= prompts:
            return [prompts]
        full, rest = divmod(prompts, self.chunk)
        return [self.chunk] * full + ([rest] if rest else [])


def _get(tree: Mapping[str, Any], dotted: str, default: Any) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return default if node is None else node


def job_kind(cfg: Mapping[str, Any]) -> str:
    """onmcpo, apo or mcpo, from the config's `job` key or its loop keys."""
    if "job" in cfg:
        return str(cfg["job"])
    loop = cfg.get("loop") or {}
    if "segments" in loop:
        return "onmcpo"
    if "iterations" in loop:
        return "apo"
    return "mcpo"


def rounds_of(cfg: Mapping[str, Any]) -> int:
    """Rounds (segments / iterations) of an online job."""
    kind = job_kind(cfg)
    if kind == "mcpo":
        raise ValueError("simulate: offline MC-PO has no online rounds (no generate / judge per round)")
    return int(_get(cfg, "loop.segments" if kind == "onmcpo" else "loop.iterations", 3))


def workload_from_config(cfg: Mapping[str, Any], prompts: int | None = None) -> RoundWorkload:
    """A typical round of an online job config (`prompts`: per round; default num_prompts / rounds).

    OnMC-PO: K candidates per prompt, the winner search asks K-1 comparisons (x2 with both orders),
    every candidate gets a reference log-prob, total_steps / segments steps. APO: dpo/ipo the same
    search, sppo the full matrix K(K-1)/2 pairs (x2); reference log-probs of the 2 sequences of a
    pair; ceil(P x epochs / batch) steps.
    """
    kind, rounds = job_kind(cfg), rounds_of(cfg)
    if prompts is None:
        total = _get(cfg, "data.num_prompts", None)
        if total is None:
            raise ValueError("data.num_prompts: unset (all prompts); pass the prompts per round explicitly")
        prompts = math.ceil(int(total) / rounds)
    k = len(_get(cfg, "generation.temperatures", [0.6, 0.8, 1.0])) * int(_get(cfg, "generation.n_per_temperature", 2))
    orders = 2 if _get(cfg, "judge.both_orders", True) else 1
    ranks = int(_get(cfg, "cluster.learner_ranks", 1))
    batch = int(_get(cfg, "learner.micro_batch_size", 8)) * int(_get(cfg, "learner.grad_accum", 1)) * ranks
    if kind == "onmcpo":
        steps = math.ceil(int(_get(cfg, "loop.total_steps", 60)) / rounds)
        requests, ref = prompts * (k - 1) * orders, prompts * k
    else:
        steps = max(1, math.ceil(prompts * int(_get(cfg, "loop.epochs", 1)) / batch))
        pairs = k * (k - 1) // 2 if _get(cfg, "algorithm.loss", "dpo") == "sppo" else k - 1
        requests, ref = prompts * pairs * orders, prompts * 2
    every = int(_get(cfg, "eval.every", 1))
    eval_prompts = int(_get(cfg, "data.num_eval_prompts", 32)) if every else 0
    kinds = 2 if _get(cfg, "eval.greedy", True) else 1
    return RoundWorkload(
        prompts=prompts, candidates=prompts * k, judge_requests=requests, ref_sequences=ref, steps=steps,
        batch=min(batch, prompts), eval_prompts=eval_prompts, eval_judge_requests=eval_prompts * kinds * 2,
        checkpoint=bool(_get(cfg, "checkpoint.enabled", True)),
    )


def layout_from_config(cfg: Mapping[str, Any], judge_pool: bool = False, cores: float | None = None) -> Layout:
    """The actors of a config's `cluster` section. judge_pool=False: only judge-0 runs (today's code).

    cores: the CPU cores the actors share (None: each role has its own hardware). A generation
    engine and a learner rank each keep `cluster.cpus_per_actor` cores busy (at 1: one busy thread
    per engine and per rank, measured on the 2-core test machine, where a second engine made
    generation 1.7x faster on a quiet machine); the reward judge and the driver are one Python
    thread each."""
    cl = cfg.get("cluster") or {}
    cpus = float(cl.get("cpus_per_actor") or 1.0)
    engines, ranks = int(cl.get("num_engines") or 1), int(cl.get("learner_ranks") or 1)
    reserved = int(cl.get("judge_engines") or 1)
    return Layout(
        engines=engines, engine_tp=int(cl.get("engine_tp") or 1),
        judges=reserved if judge_pool else 1, judges_reserved=reserved, judge_tp=int(cl.get("judge_tp") or 1),
        learner_ranks=ranks, colocate=bool(cl.get("colocate", False)), cores=cores,
        role_cores={"generation": engines * cpus, "judge": 1.0, "learner": ranks * cpus, "driver": 1.0},
    )
