"""Shared pieces of the system benchmarks: the benchmark model, the environment record,
interleaved timing with medians and ratios, and `bench/results.json`.

Every figure a benchmark reports is a ratio of two things measured side by side in one run:
`interleave` runs each case once per round (the order rotated every round, so neither side is
always first after the other), and the ratio is taken between the medians.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from apo_pipeline.task.tiny_model import TinyModelSettings, random_tiny_model

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
SEED = 0
RAY_CPUS = 8  # logical, as in the integration tests; every actor asks for 1
MAX_MODEL_LEN = 256
# ~23 M parameters: 8 Qwen2 layers of hidden 512 (8 query heads, 2 KV heads, head_dim 64 as vLLM's
# CPU attention needs), the local tokenizer's vocabulary, untied embeddings; random init, fp32.
MODEL_SETTINGS = TinyModelSettings(
    hidden_size=512,
    num_layers=8,
    num_heads=8,
    num_kv_heads=2,
    intermediate_size=1408,
    max_position_embeddings=MAX_MODEL_LEN,
)


def build_model(directory: str | Path) -> str:
    """Write the benchmark model (random init, seed `SEED`) with the local tokenizer; its directory."""
    return str(random_tiny_model(Path(directory) / "model", seed=SEED, settings=MODEL_SETTINGS))


def model_info(model_dir: str) -> dict[str, Any]:
    """Parameter count and fp32 bytes (from the safetensors header) and the architecture."""
    from safetensors import safe_open

    with safe_open(str(Path(model_dir) / "model.safetensors"), framework="pt") as f:
        params = sum(torch.Size(f.get_slice(name).get_shape()).numel() for name in f.keys())
    vocab = json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"]
    m = MODEL_SETTINGS
    return {
        "params": params,
        "bytes_fp32": 4 * params,
        "architecture": f"Qwen2, {m.num_layers} layers, hidden {m.hidden_size}, {m.num_heads} heads "
        f"({m.num_kv_heads} KV, head_dim 64), intermediate {m.intermediate_size}, vocab {vocab}, random init",
    }


def start_ray() -> None:
    """A fresh local Ray (never a cluster started with `ray start`)."""
    import ray

    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)


def environment() -> dict[str, Any]:
    """Library versions, machine, seed and git commit of this run."""
    import deepspeed
    import ray
    import transformers
    import vllm

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "vllm": vllm.__version__,
        "ray": ray.__version__,
        "deepspeed": deepspeed.__version__,
        "transformers": transformers.__version__,
        "cpu": cpu,
        "nproc": len(os.sched_getaffinity(0)),
        "load_avg_1m": os.getloadavg()[0],
        "seed": SEED,
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("--no-optional-locks", "status", "--porcelain")),
    }


def interleave(cases: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each case per round: `warmup` unrecorded rounds, then `repeats` recorded ones.

    Round r runs the cases in their order rotated by r.
    """
    names = list(cases)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            cases[name]()
            if r >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return seconds


def summary(samples: list[float]) -> dict[str, float]:
    """Median, min, max and count of timing samples (seconds)."""
    return {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples), "n": len(samples)}


def ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 4)


def write_result(key: str, value: dict[str, Any]) -> None:
    """Merge `{key: value}` into bench/results.json (written to a temporary file, then renamed)."""
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results[key] = value
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, RESULTS)
