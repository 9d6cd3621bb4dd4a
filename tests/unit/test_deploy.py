"""deploy/: files parse, name things that exist, fit each other and the GPU configs, validate.

Fast (no Ray cluster, no GPU): YAML parsing, JSON-schema checks (Ray's own cluster schema for the
`ray up` file), `bash -n` of the scripts. The KubeRay RayJob and the runtime env:
test_rayjob.py; the GPU configs themselves: test_gpu_configs.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from apo_pipeline.config import JOB_CONFIGS, load_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
GPU_CONFIGS = REPO / "jobs" / "configs" / "gpu"
RUNS_PATH = "/mnt/runs"


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def gpu_config(name: str):
    path = GPU_CONFIGS / name
    return load_config(JOB_CONFIGS[load_yaml(path)["job"]], path)


# --------------------------------------------------------------------------- every file parses


def test_every_deploy_yaml_parses_to_a_mapping():
    files = sorted(DEPLOY.glob("*.yaml"))
    assert {p.name for p in files} >= {"ray-cluster.yaml", "kuberay-rayjob.yaml", "runtime-env.yaml"}
    for path in files:
        assert isinstance(load_yaml(path), dict), path


REFERENCE = re.compile(r"(?<![\w/.-])(jobs/[\w-]+\.py|jobs/configs/[\w/.-]+\.ya?ml)")


def test_every_script_and_config_named_in_deploy_exists():
    """Any `jobs/<job>.py` or `jobs/configs/...yaml` in deploy/ or docs/scaling.md must exist."""
    seen = set()
    for path in [*sorted(DEPLOY.iterdir()), REPO / "docs" / "scaling.md"]:
        if path.is_file():
            for ref in REFERENCE.findall(path.read_text()):
                seen.add(ref)
                assert (REPO / ref).is_file(), f"{path.relative_to(REPO)} names {ref}, which does not exist"
    assert "jobs/onmcpo.py" in seen and "jobs/configs/gpu/onmcpo-8b.yaml" in seen


# --------------------------------------------------------------------------- ray up


def ray_cluster_schema() -> dict:
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations
    path = Path(list(spec.submodule_search_locations)[0]) / "autoscaler" / "ray-schema.json"
    assert path.is_file(), f"Ray's cluster schema is not at {path}"
    return json.loads(path.read_text())


def test_ray_cluster_validates_against_rays_own_schema():
    cfg = load_yaml(DEPLOY / "ray-cluster.yaml")
    jsonschema.validate(cfg, ray_cluster_schema())


def test_ray_cluster_has_head_workers_shared_fs_install_and_token_auth():
    cfg = load_yaml(DEPLOY / "ray-cluster.yaml")
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type",
                "head_start_ray_commands", "worker_start_ray_commands", "file_mounts", "setup_commands"):
        assert cfg.get(key), f"ray-cluster.yaml: missing {key}"
    assert cfg["provider"]["type"] in ("aws", "gcp", "azure")
    assert cfg["head_node_type"] in cfg["available_node_types"]
    workers = {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}
    assert workers, "no worker node type"

    setup = "\n".join(cfg.get("initialization_commands", []) + cfg["setup_commands"])
    assert RUNS_PATH in setup, "the shared filesystem for runs is not mounted in setup"
    assert '.[gpu]' in setup and re.search(r"--no-build-isolation\s+\"?deepspeed", setup)
    assert any(remote.endswith("auth_token") for remote in cfg["file_mounts"])

    head, worker = " ".join(cfg["head_start_ray_commands"]), " ".join(cfg["worker_start_ray_commands"])
    assert "--head" in head and "--dashboard-host=127.0.0.1" in head
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in worker
    assert "$RAY_HEAD_IP" in worker


def test_ray_cluster_holds_the_gpus_onmcpo_8b_places():
    cfg = load_yaml(DEPLOY / "ray-cluster.yaml")
    gpus = sum(
        t.get("min_workers", 0) * t.get("resources", {}).get("GPU", 0)
        for name, t in cfg["available_node_types"].items()
        if name != cfg["head_node_type"]
    )
    assert gpus >= gpu_config("onmcpo-8b.yaml").cluster.num_gpus


# --------------------------------------------------------------------------- shell scripts


@pytest.mark.parametrize("script", ["slurm-launch.sh", "gpu-smoke.sh"])
def test_scripts_are_bash_n_clean_and_strict(script):
    path = DEPLOY / script
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert re.search(r"^set -euo pipefail$", text, re.M), f"{script}: no `set -euo pipefail`"
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_slurm_script_uses_token_auth_a_local_dashboard_and_a_shared_run_dir():
    text = (DEPLOY / "slurm-launch.sh").read_text()
    assert "RAY_AUTH_MODE=token" in text and "RAY_AUTH_TOKEN" in text
    assert "--dashboard-host=127.0.0.1" in text and "--head" in text and "--block" in text
    assert "srun" in text and "--run-dir" in text


def test_gpu_smoke_runs_the_smoke_config_and_the_gpu_tests():
    text = (DEPLOY / "gpu-smoke.sh").read_text()
    assert "jobs/onmcpo.py" in text and "jobs/configs/gpu/smoke-1gpu.yaml" in text
    assert "-m gpu" in text and "tests/integration" in text
