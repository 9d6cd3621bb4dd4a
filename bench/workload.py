"""The end-to-end workload both sides run: one set of prompts and training settings.

Online DPO in both: K = 2 completions per prompt at temperature 1.0, the preferred one by the
built-in task's reward r*, a DPO step per `pairs_per_step` prompts, every prompt used once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from apo_pipeline.task.synthetic import SyntheticTask
from common import MAX_MODEL_LEN, SEED


@dataclass(frozen=True)
class Workload:
    segments: int = 4  # ours: OnMC-PO segments; TRL: the same prompts in the same number of windows
    segment_prompts: int = 64
    pairs_per_step: int = 8  # prompts (= preference pairs) per optimizer step
    completions: int = 2  # TRL's online DPO always samples 2
    temperature: float = 1.0
    max_tokens: int = 12
    beta: float = 0.1
    lr: float = 1e-4
    max_grad_norm: float = 1.0
    max_model_len: int = MAX_MODEL_LEN
    seed: int = SEED

    @property
    def num_prompts(self) -> int:
        return self.segments * self.segment_prompts

    @property
    def steps_per_segment(self) -> int:
        return self.segment_prompts // self.pairs_per_step


WORKLOAD = Workload()


def write_prompts(path: Path) -> list[str]:
    """The built-in task's first `num_prompts` train prompts, one `{"prompt": ...}` per line."""
    prompts = SyntheticTask(WORKLOAD.seed).prompts(WORKLOAD.num_prompts)
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return prompts


def read_prompts(path: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines()]
