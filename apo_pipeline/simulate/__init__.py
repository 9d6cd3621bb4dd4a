"""Round simulator: predicts a round's wall time and each role's load, sequential against streamed.

Pure Python (no Ray). Inputs: per-stage costs (`rates`: measured from a run's stage events by
`measured`, or modelled by the FLOP model in `flops`), the actors (`workload.Layout`) and the
round's work (`workload.RoundWorkload`); `events` runs the round as a task graph; `presets` holds
the GPU layouts of docs/scaling.md; `report` formats tables; `cli` is `apo-pipeline simulate`.
"""

from apo_pipeline.simulate.events import RoundResult, simulate_round
from apo_pipeline.simulate.measured import fit_rates, read_run
from apo_pipeline.simulate.rates import StageCost, StageRates
from apo_pipeline.simulate.workload import Layout, RoundWorkload, Schedule, layout_from_config, workload_from_config

__all__ = [
    "Layout",
    "RoundResult",
    "RoundWorkload",
    "Schedule",
    "StageCost",
    "StageRates",
    "fit_rates",
    "layout_from_config",
    "read_run",
    "simulate_round",
    "workload_from_config",
]
