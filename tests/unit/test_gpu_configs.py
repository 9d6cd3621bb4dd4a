"""jobs/configs/gpu/: every GPU config validates through the pydantic config models, names its
job and fits its placement; docs/scaling.md's 64-GPU command line is a valid set of overrides."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from apo_pipeline.config import JOB_CONFIGS, OnMCPOConfig, load_config

REPO = Path(__file__).resolve().parents[2]
GPU_CONFIGS = REPO / "jobs" / "configs" / "gpu"


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def gpu_config(name: str):
    path = GPU_CONFIGS / name
    return load_config(JOB_CONFIGS[load_yaml(path)["job"]], path)


GPU_CONFIG_FILES = sorted(p.name for p in GPU_CONFIGS.glob("*.yaml"))


def test_the_expected_gpu_configs_exist():
    expected = {"onmcpo-8b.yaml", "onmcpo-8b-colocated.yaml", "apo-8b-dpo.yaml", "apo-8b-sppo.yaml", "smoke-1gpu.yaml"}
    assert set(GPU_CONFIG_FILES) >= expected


@pytest.mark.parametrize("name", GPU_CONFIG_FILES)
def test_gpu_config_validates_and_names_its_job(name):
    data = load_yaml(GPU_CONFIGS / name)
    job = data.get("job")
    assert job in JOB_CONFIGS, f"{name}: no `job:` key naming one of {sorted(JOB_CONFIGS)}"
    prefix = next((j for j in sorted(JOB_CONFIGS, key=len, reverse=True) if name.startswith(j)), job)
    assert prefix == job, f"{name}: `job: {job}` contradicts the file name"
    cfg = gpu_config(name)
    assert cfg.cluster.use_gpu and cfg.model.dtype == "bfloat16"
    assert cfg.cluster.num_gpus is not None, f"{name}: set cluster.num_gpus so the placement is checked"
    if cfg.cluster.colocate:
        # NCCL refuses two ranks of one communicator on one GPU: learner rank 0 shares its GPU with an engine.
        assert cfg.sync.backend != "nccl", f"{name}: colocated engines cannot receive weights over NCCL"


def test_the_64_gpu_example_of_docs_scaling_validates():
    """docs/scaling.md's 64-GPU command line is a real, valid set of overrides."""
    text = (REPO / "docs" / "scaling.md").read_text()
    blocks = [b for b in re.findall(r"```[a-z]*\n(.*?)```", text, re.S) if "cluster.num_gpus=64" in b]
    assert blocks, "docs/scaling.md has no code block with the 64-GPU command line"
    argv = shlex.split(blocks[0].replace("\\\n", " "))
    config = argv[argv.index("--config") + 1]
    overrides = [a for a in argv[argv.index("--config") + 2 :] if "=" in a and not a.startswith("-")]
    cfg = load_config(OnMCPOConfig, REPO / config, overrides)
    c = cfg.cluster
    assert c.num_gpus == 64
    assert c.num_engines * c.engine_tp + c.judge_engines * c.judge_tp + c.learner_ranks == 64
    assert cfg.learner.micro_batch_size * cfg.learner.grad_accum * c.learner_ranks == 128
