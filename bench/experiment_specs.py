"""The algorithm experiments of `bench/experiments.py`: named sets of variants, each one job plus
`key=value` overrides, run on top of a per-job scale that keeps one run to about 1-2 minutes on
2 CPU cores.

A run's command is `python jobs/<job>.py --run-dir DIR <scale of the job> <variant overrides> seed=N`
(overrides are applied left to right, so a variant's override wins over the scale).
"""

from __future__ import annotations

from dataclasses import dataclass

# Each scale pins every size it relies on, so a change of the YAML defaults does not change the runs.
APO_SCALE = ("data.num_prompts=192", "data.num_eval_prompts=32", "loop.iterations=4", "loop.epochs=4")
"""4 iterations of 48 fresh prompts, 4 epochs each: 12 steps of 16 pairs per iteration."""
ONMCPO_SCALE = ("data.num_prompts=96", "data.num_eval_prompts=32", "loop.segments=3", "loop.total_steps=72")
"""3 segments of 32 fresh prompts, 24 steps of 16 groups each (72 steps); evaluated after each segment.
(The job's default, one pass over the prompts, would be 6 steps here: too few to move the tiny model.)"""
MCPO_SCALE = ("loop.builtin_prompts=96", "data.num_eval_prompts=32", "loop.epochs=12", "eval.every=4")
"""The same 96 prompts, sampled once from the start policy: 12 epochs of 6 steps (72 steps),
evaluated at epochs 4, 8 and 12 (after steps 24, 48, 72, as the online segments)."""
SCALES = {"apo": APO_SCALE, "onmcpo": ONMCPO_SCALE, "mcpo": MCPO_SCALE}
JOBS = tuple(SCALES)


@dataclass(frozen=True)
class Variant:
    """One arm of an experiment: a job and its overrides (on top of the job's scale)."""

    name: str
    job: str
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.job not in JOBS:
            raise ValueError(f"variant {self.name!r}: unknown job {self.job!r}; choose one of {', '.join(JOBS)}")


@dataclass(frozen=True)
class Experiment:
    """Named variants compared on held-out reward, seed by seed.

    `policies`: the eval lines each run logs (APO: "extrapolated" and "hat", the weights after and
    before the extrapolation); each variant is then summarized once per policy, labelled
    "<variant>/<policy>". `paired` pairs (label, baseline label) compared seed by seed (mean
    difference and 95% t interval). `reach` pairs (label, baseline label): how many iterations the
    label needs to reach the baseline's final mean reward."""

    name: str
    description: str
    variants: tuple[Variant, ...]
    reach: tuple[tuple[str, str], ...] = ()
    paired: tuple[tuple[str, str], ...] = ()
    policies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.name!r}: duplicate variant names {names}")
        for kind, pairs in (("reach", self.reach), ("paired", self.paired)):
            for pair in pairs:
                if not set(pair) <= set(self.labels):
                    raise ValueError(f"experiment {self.name!r}: {kind} {pair} names an unknown variant")

    @property
    def labels(self) -> list[str]:
        """What is summarized: each variant, or each (variant, policy) as "<variant>/<policy>"."""
        return [f"{v.name}/{p}" for v in self.variants for p in self.policies] or [v.name for v in self.variants]

    def split(self, label: str) -> tuple[str, str | None]:
        """(variant name, policy or None) of a label."""
        name, _, policy = label.partition("/")
        return name, policy or None

    def command_overrides(self, variant: Variant, seed: int) -> list[str]:
        """The `key=value` arguments of one run: the job's scale, the variant's overrides, the seed."""
        return [*SCALES[variant.job], *variant.overrides, f"seed={seed}"]


APO_LOSSES = ("dpo", "ipo", "sppo")
APO_POLICIES = ("extrapolated", "hat")  # theta_{t+1} and pihat_{t+1}, both evaluated every iteration
MC_NEGATIVES = ("mc", "random", "max", "min")
SPO_LAMBDA = 1.0  # the loss's documented default (docs/algorithms.md); "too large" over-constrains
CDPO_SCHEDULE = (24, 48)  # optimizer steps: POS only up to the end of segment 1, NEG only from the end of segment 2
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
ONMCPO_PROMPTS = 32  # per segment at ONMCPO_SCALE
STREAM_CHUNK = 8


def negatives(sampler: str, m: int, loss: str) -> tuple[str, ...]:
    """Overrides of a negative sampler with M negatives and a loss."""
    return (f"algorithm.negatives={sampler}", f"algorithm.num_negatives={m}", f"algorithm.loss={loss}")


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment(
            "apo_vs_dpo",
            "iterative APO (loop.alpha 0.3) against plain iterative training (alpha 0) for dpo, ipo and sppo",
            tuple(
                Variant(f"{loss}_alpha{alpha:g}", "apo", (f"algorithm.loss={loss}", f"loop.alpha={alpha:g}"))
                for loss in APO_LOSSES
                for alpha in (0.3, 0.0)
            ),
            reach=tuple((f"{loss}_alpha0.3/extrapolated", f"{loss}_alpha0/extrapolated") for loss in APO_LOSSES),
            paired=tuple(
                pair
                for loss in APO_LOSSES
                for pair in (
                    (f"{loss}_alpha0.3/extrapolated", f"{loss}_alpha0/extrapolated"),  # the paper's comparison
                    (f"{loss}_alpha0.3/hat", f"{loss}_alpha0/hat"),  # what the seed's guarantee is about
                    (f"{loss}_alpha0.3/extrapolated", f"{loss}_alpha0.3/hat"),  # which one carries the gain
                )
            ),
            policies=APO_POLICIES,
        ),
        Experiment(
            "mc_samplers",
            "offline MC-PO negative samplers at M = 1 (dpo), and the MC kernel with M = 2 and 4 (rnce)",
            (
                *(Variant(f"{sampler}_m1", "mcpo", negatives(sampler, 1, "dpo")) for sampler in MC_NEGATIVES),
                *(Variant(f"mc_m{m}", "mcpo", negatives("mc", m, "rnce")) for m in (2, 4)),
            ),
            paired=(("mc_m1", "random_m1"), ("max_m1", "random_m1"), ("min_m1", "random_m1"), ("mc_m2", "mc_m1"),
                    ("mc_m4", "mc_m1")),
        ),
        Experiment(
            "online_vs_offline",
            "OnMC-PO (online, MC negatives) against offline MC-PO on the same number of prompts and steps, "
            "and online DPO with a uniformly random negative",
            (
                Variant("online_mc", "onmcpo", negatives("mc", 1, "dpo")),
                Variant("offline_mc", "mcpo", negatives("mc", 1, "dpo")),
                Variant("online_random", "onmcpo", negatives("random", 1, "dpo")),
            ),
            # the MC-PO paper's claims: OnMC-PO > (offline) MC-PO and OnMC-PO > online DPO (random negative)
            paired=(("online_mc", "offline_mc"), ("online_mc", "online_random")),
        ),
        Experiment(
            "reference",
            "OnMC-PO (MC negatives, M = 1) with pi_ref = the starting policy (algorithm.reference initial, the "
            "default) against pi_ref = each segment's start policy (round); the MC kernel's entropy per segment",
            (
                Variant("initial", "onmcpo", (*negatives("mc", 1, "dpo"), "algorithm.reference=initial")),
                Variant("round", "onmcpo", (*negatives("mc", 1, "dpo"), "algorithm.reference=round")),
                Variant("round_random", "onmcpo", (*negatives("random", 1, "dpo"), "algorithm.reference=round")),
            ),
            paired=(("initial", "round"), ("round", "round_random")),
        ),
        Experiment(
            "streaming",
            "OnMC-PO (MC negatives, M = 1) with sequential rounds (the default) against streamed rounds "
            f"(loop.stream, chunks of {STREAM_CHUNK} prompts: {ONMCPO_PROMPTS // STREAM_CHUNK} per segment), "
            "whose early steps train on the first chunks' groups only",
            (
                Variant("sequential", "onmcpo", negatives("mc", 1, "dpo")),
                Variant("streamed", "onmcpo", (*negatives("mc", 1, "dpo"), "loop.stream=true",
                                               f"loop.stream_chunk={STREAM_CHUNK}")),
            ),
            paired=(("streamed", "sequential"),),  # issue 11: streaming becomes the default only if equal
        ),
        Experiment(
            "spo_cdpo",
            f"OnMC-PO (MC negatives, M = 1) with dpo, spo (spo_lambda {SPO_LAMBDA}) and dpo under the cDPO "
            f"schedule (t1, t2) = {CDPO_SCHEDULE}, as a linear cross-fade (cdpo) and as phases (cdpo_phases: "
            "no NEG before t1, plain DPO between, no POS from t2)",
            (
                Variant("dpo", "onmcpo", negatives("mc", 1, "dpo")),
                Variant("spo", "onmcpo", (*negatives("mc", 1, "spo"), f"algorithm.loss_options.spo_lambda={SPO_LAMBDA}")),
                Variant("cdpo", "onmcpo", (*negatives("mc", 1, "dpo"), "algorithm.cdpo=[{},{}]".format(*CDPO_SCHEDULE))),
                Variant("cdpo_phases", "onmcpo", (*negatives("mc", 1, "dpo"), "algorithm.cdpo=[{},{}]".format(*CDPO_SCHEDULE),
                                                  "algorithm.cdpo_shape=phases")),
            ),
            paired=(("spo", "dpo"), ("cdpo", "dpo"), ("cdpo_phases", "dpo"), ("cdpo_phases", "cdpo")),
        ),
    )
}
