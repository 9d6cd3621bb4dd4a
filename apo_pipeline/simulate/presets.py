"""The GPU layouts of docs/scaling.md as simulator inputs, and the before / after comparison.

Each preset is a GPU job config (`jobs/configs/gpu/`) plus the overrides the doc gives. `before`
is the code before issue 11 (stages in sequence, only `judge-0` running), `pool` adds the judge
pool (all `cluster.judge_engines` judges), `after` streams the rounds as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from apo_pipeline.config import JOB_CONFIGS, load_config, read_yaml
from apo_pipeline.simulate.events import RoundResult, simulate_round
from apo_pipeline.simulate.flops import GPUModel, gpu_rates
from apo_pipeline.simulate.rates import StageRates
from apo_pipeline.simulate.workload import Layout, RoundWorkload, Schedule, job_kind, layout_from_config, workload_from_config

GPU_CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "gpu"
DEFAULT_CHUNK = 1024  # prompts per streamed chunk in the GPU tables (about 20 chunks of a 20,224-prompt segment)


@dataclass(frozen=True)
class Preset:
    """A doc layout: `config` under jobs/configs/gpu/ plus `overrides` (key.sub=value)."""

    title: str
    config: str
    overrides: tuple[str, ...] = ()

    def load(self) -> dict[str, Any]:
        """The resolved, validated config as a mapping (the shape of a run's config.yaml)."""
        path = GPU_CONFIGS / self.config
        kind = job_kind(read_yaml(path))
        return load_config(JOB_CONFIGS[kind], path, list(self.overrides)).model_dump(mode="json")


PRESETS: dict[str, Preset] = {
    "gpu8": Preset("8 GPUs, one node, colocated", "onmcpo-8b-colocated.yaml"),
    "gpu16": Preset("16 GPUs, two nodes", "onmcpo-8b.yaml"),
    "gpu64": Preset("64 GPUs, eight nodes", "onmcpo-8b.yaml", (
        "cluster.num_gpus=64", "cluster.num_engines=8", "cluster.judge_engines=10", "cluster.judge_tp=4",
        "cluster.learner_ranks=16", "learner.grad_accum=4")),
    # what the simulator suggests once the judge is the only bottleneck left (docs/scaling.md)
    "gpu16c": Preset("16 GPUs, generation colocated, 3 judges", "onmcpo-8b-colocated.yaml", (
        "cluster.num_gpus=16", "cluster.judge_engines=3")),
    "gpu64b": Preset("64 GPUs, 12 judges, 8 learner ranks", "onmcpo-8b.yaml", (
        "cluster.num_gpus=64", "cluster.num_engines=8", "cluster.judge_engines=12", "cluster.judge_tp=4",
        "cluster.learner_ranks=8", "learner.grad_accum=8")),
}


@dataclass(frozen=True)
class Scenario:
    """One column of the comparison: the judge pool on or off, the schedule."""

    name: str
    judge_pool: bool
    schedule: Schedule


def scenarios(chunk: int = DEFAULT_CHUNK, ref_from_engines: bool = False) -> list[Scenario]:
    """before (today), pool (judge pool, sequential), after (judge pool, streamed)."""
    return [
        Scenario("before", False, Schedule("sequential")),
        Scenario("pool", True, Schedule("sequential")),
        Scenario("after", True, Schedule("streamed", chunk, ref_from_engines)),
    ]


@dataclass
class PresetRun:
    """A preset simulated under one scenario."""

    preset: str
    scenario: Scenario
    layout: Layout
    workload: RoundWorkload
    rates: StageRates
    result: RoundResult = field(repr=False)


def modelled_rates(cfg: dict[str, Any], gpu: GPUModel = GPUModel()) -> StageRates:
    """The FLOP model's rates for a config's K, judge TP, sync backend and loss."""
    gen, cl = cfg["generation"], cfg["cluster"]
    k = len(gen["temperatures"]) * int(gen["n_per_temperature"])
    mc = job_kind(cfg) == "onmcpo" and cfg["algorithm"]["negatives"] == "mc"
    backend = "cpu" if cfg["sync"]["backend"] == "cpu" else "nccl"
    return gpu_rates(gpu=gpu, candidates_per_prompt=k, scored_per_pair=k if mc else 0,
                     judge_tp=int(cl["judge_tp"]), sync_backend=backend, greedy_eval=bool(cfg["eval"]["greedy"]))


def run_preset(name: str, scenario: Scenario, gpu: GPUModel = GPUModel()) -> PresetRun:
    """Simulate one round (segment / iteration) of preset `name` under `scenario`."""
    if name not in PRESETS:
        raise KeyError(f"--preset: unknown {name!r}; known: {', '.join(PRESETS)}")
    cfg = PRESETS[name].load()
    base = layout_from_config(cfg, judge_pool=scenario.judge_pool)
    layout = replace(base, switch_s=gpu.switch_s)
    work = workload_from_config(cfg)
    rates = modelled_rates(cfg, gpu)
    return PresetRun(name, scenario, layout, work, rates, simulate_round(work, layout, rates, scenario.schedule))
