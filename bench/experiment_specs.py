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
"""3 segments of 32 fresh prompts, 24 steps of 16 groups each (72 steps); evaluated after each segment."""
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
    """Named variants compared on held-out reward. `reach` pairs (variant, baseline): how many
    iterations the variant needs to reach the baseline's final mean reward."""

    name: str
    description: str
    variants: tuple[Variant, ...]
    reach: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.name!r}: duplicate variant names {names}")
        for pair in self.reach:
            if not set(pair) <= set(names):
                raise ValueError(f"experiment {self.name!r}: reach {pair} names an unknown variant")

    def command_overrides(self, variant: Variant, seed: int) -> list[str]:
        """The `key=value` arguments of one run: the job's scale, the variant's overrides, the seed."""
        return [*SCALES[variant.job], *variant.overrides, f"seed={seed}"]


APO_LOSSES = ("dpo", "ipo", "sppo")
MC_NEGATIVES = ("mc", "random", "max", "min")
SPO_LAMBDA = 1.0  # the loss's documented default (docs/algorithms.md); "too large" over-constrains
CDPO_SCHEDULE = (24, 48)  # optimizer steps: POS only up to the end of segment 1, NEG only from the end of segment 2


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
            reach=tuple((f"{loss}_alpha0.3", f"{loss}_alpha0") for loss in APO_LOSSES),
        ),
        Experiment(
            "mc_samplers",
            "offline MC-PO negative samplers at M = 1 (dpo), and the MC kernel with M = 2 and 4 (rnce)",
            (
                *(Variant(f"{sampler}_m1", "mcpo", negatives(sampler, 1, "dpo")) for sampler in MC_NEGATIVES),
                *(Variant(f"mc_m{m}", "mcpo", negatives("mc", m, "rnce")) for m in (2, 4)),
            ),
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
        ),
        Experiment(
            "spo_cdpo",
            f"OnMC-PO (MC negatives, M = 1) with dpo, spo (spo_lambda {SPO_LAMBDA}) and dpo under the cDPO "
            f"schedule (t1, t2) = {CDPO_SCHEDULE}",
            (
                Variant("dpo", "onmcpo", negatives("mc", 1, "dpo")),
                Variant("spo", "onmcpo", (*negatives("mc", 1, "spo"), f"algorithm.loss_options.spo_lambda={SPO_LAMBDA}")),
                Variant("cdpo", "onmcpo", (*negatives("mc", 1, "dpo"), "algorithm.cdpo=[{},{}]".format(*CDPO_SCHEDULE))),
            ),
        ),
    )
}
