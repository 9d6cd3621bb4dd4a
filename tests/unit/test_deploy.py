"""deploy/ and jobs/configs/gpu/: files parse, name things that exist, fit each other, validate.

Fast (no Ray cluster, no GPU): YAML parsing, JSON-schema checks (Ray's own cluster schema for the
`ray up` file, a hand-written ray.io/v1 RayJob schema below), `bash -n` of the scripts, and every
GPU config through the pydantic config models.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path

import jsonschema
import pytest
import yaml

from apo_pipeline.config import JOB_CONFIGS, OnMCPOConfig, load_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
GPU_CONFIGS = REPO / "jobs" / "configs" / "gpu"
RUNS_PATH = "/mnt/runs"

# Effective batch (micro_batch_size x grad_accum x learner_ranks) of the 8B configs: 128 is the
# MC-PO paper's batched online setup; the APO configs use the same batch on purpose.
EXPECTED_BATCH = {
    "onmcpo-8b.yaml": 128,
    "onmcpo-8b-colocated.yaml": 128,
    "apo-8b-dpo.yaml": 128,
    "apo-8b-sppo.yaml": 128,
}


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


# --------------------------------------------------------------------------- KubeRay RayJob

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_QUANTITY = {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": r"^[0-9.]+([KMGTPE]i?|[mk])?$"}]}
_RESOURCES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "requests": {"type": "object", "additionalProperties": _QUANTITY},
        "limits": {"type": "object", "additionalProperties": _QUANTITY},
    },
}
_VOLUME_MOUNT = {
    "type": "object",
    "required": ["name", "mountPath"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "mountPath": {"type": "string", "pattern": "^/"},
        "subPath": {"type": "string"},
        "readOnly": {"type": "boolean"},
        "mountPropagation": {"type": "string"},
    },
}
_VOLUME = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "minProperties": 2,
    "maxProperties": 2,
    "properties": {
        "name": {"type": "string"},
        "persistentVolumeClaim": {
            "type": "object",
            "required": ["claimName"],
            "additionalProperties": False,
            "properties": {"claimName": {"type": "string"}, "readOnly": {"type": "boolean"}},
        },
        "emptyDir": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"medium": {"enum": ["", "Memory"]}, "sizeLimit": _QUANTITY},
        },
        "configMap": {"type": "object"},
        "secret": {"type": "object"},
        "hostPath": {"type": "object"},
        "csi": {"type": "object"},
    },
}
_CONTAINER = {
    "type": "object",
    "required": ["name", "image"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "image": {"type": "string", "minLength": 1},
        "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        "command": {"type": "array", "items": {"type": "string"}},
        "args": {"type": "array", "items": {"type": "string"}},
        "workingDir": {"type": "string"},
        "env": {"type": "array", "items": {"type": "object", "required": ["name"]}},
        "envFrom": {"type": "array"},
        "ports": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["containerPort"],
                "additionalProperties": False,
                "properties": {
                    "containerPort": {"type": "integer"},
                    "name": {"type": "string"},
                    "protocol": {"type": "string"},
                },
            },
        },
        "resources": _RESOURCES,
        "volumeMounts": {"type": "array", "items": _VOLUME_MOUNT},
        "securityContext": {"type": "object"},
        "lifecycle": {"type": "object"},
        "livenessProbe": {"type": "object"},
        "readinessProbe": {"type": "object"},
    },
}
_POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "additionalProperties": False,
    "properties": {
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["containers"],
            "additionalProperties": False,
            "properties": {
                "containers": {"type": "array", "minItems": 1, "items": _CONTAINER},
                "initContainers": {"type": "array", "items": _CONTAINER},
                "volumes": {"type": "array", "items": _VOLUME},
                "nodeSelector": _STR_MAP,
                "tolerations": {"type": "array", "items": {"type": "object"}},
                "affinity": {"type": "object"},
                "serviceAccountName": {"type": "string"},
                "imagePullSecrets": {"type": "array"},
                "securityContext": {"type": "object"},
                "restartPolicy": {"enum": ["Always", "OnFailure", "Never"]},
                "priorityClassName": {"type": "string"},
                "schedulerName": {"type": "string"},
                "terminationGracePeriodSeconds": {"type": "integer"},
            },
        },
    },
}
# The ray.io/v1 RayJob fields this repository uses (names and types from KubeRay's
# ray-operator/apis/ray/v1/rayjob_types.go and raycluster_types.go), closed with
# additionalProperties: false wherever the manifest is ours, so a misspelt key fails here
# instead of being dropped silently by the API server.
RAYJOB_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                "namespace": {"type": "string"},
                "labels": _STR_MAP,
                "annotations": _STR_MAP,
            },
        },
        "spec": {
            "type": "object",
            "required": ["entrypoint", "rayClusterSpec"],
            "additionalProperties": False,
            "properties": {
                "entrypoint": {"type": "string", "minLength": 1},
                "runtimeEnvYAML": {"type": "string"},
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                "backoffLimit": {"type": "integer", "minimum": 0},
                "submitterConfig": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"backoffLimit": {"type": "integer", "minimum": 0}},
                },
                "submitterPodTemplate": _POD_TEMPLATE,
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
                "entrypointNumCpus": {"type": "number", "minimum": 0},
                "entrypointNumGpus": {"type": "number", "minimum": 0},
                "entrypointResources": {"type": "string"},
                "jobId": {"type": "string"},
                "metadata": _STR_MAP,
                "suspend": {"type": "boolean"},
                "rayClusterSpec": {
                    "type": "object",
                    "required": ["headGroupSpec"],
                    "additionalProperties": False,
                    "properties": {
                        "rayVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
                        "authOptions": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"mode": {"enum": ["disabled", "token"]}, "secretName": {"type": "string"}},
                        },
                        "enableInTreeAutoscaling": {"type": "boolean"},
                        "headGroupSpec": {
                            "type": "object",
                            "required": ["rayStartParams", "template"],
                            "additionalProperties": False,
                            "properties": {
                                "rayStartParams": _STR_MAP,
                                "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                                "template": _POD_TEMPLATE,
                            },
                        },
                        "workerGroupSpecs": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["groupName", "rayStartParams", "template"],
                                "additionalProperties": False,
                                "properties": {
                                    "groupName": {"type": "string", "minLength": 1},
                                    "replicas": {"type": "integer", "minimum": 0},
                                    "minReplicas": {"type": "integer", "minimum": 0},
                                    "maxReplicas": {"type": "integer", "minimum": 0},
                                    "numOfHosts": {"type": "integer", "minimum": 1},
                                    "rayStartParams": _STR_MAP,
                                    "template": _POD_TEMPLATE,
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def rayjob() -> dict:
    return load_yaml(DEPLOY / "kuberay-rayjob.yaml")


def pod_specs(job: dict) -> list[tuple[str, dict, int]]:
    """(group, pod spec, replicas) for the head and each worker group."""
    cluster = job["spec"]["rayClusterSpec"]
    out = [("head", cluster["headGroupSpec"]["template"]["spec"], 1)]
    out += [(g["groupName"], g["template"]["spec"], g.get("replicas", 0)) for g in cluster["workerGroupSpecs"]]
    return out


def test_rayjob_passes_the_v1_schema():
    jsonschema.validate(rayjob(), RAYJOB_SCHEMA)


@pytest.mark.parametrize(
    "path, key, typo",
    [
        (("spec",), "shutdownAfterJobFinishes", "shutdownAfterJobFinish"),
        (("spec", "rayClusterSpec"), "workerGroupSpecs", "workerGroupSpec"),
        (("spec", "rayClusterSpec", "headGroupSpec", "template", "spec", "containers", 0), "volumeMounts", "volumeMount"),
    ],
)
def test_rayjob_schema_rejects_a_misspelt_key(path, key, typo):
    job = copy.deepcopy(rayjob())
    node = job
    for part in path:
        node = node[part]
    node[typo] = node.pop(key)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(job, RAYJOB_SCHEMA)


def test_rayjob_rejects_a_non_string_ray_start_param():
    job = copy.deepcopy(rayjob())
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(job, RAYJOB_SCHEMA)


def test_rayjob_entrypoint_runs_an_existing_job_with_an_existing_config_on_the_shared_runs_path():
    argv = shlex.split(rayjob()["spec"]["entrypoint"])
    assert argv[0] == "python" and (REPO / argv[1]).is_file(), argv
    config = argv[argv.index("--config") + 1]
    assert (REPO / config).is_file(), config
    assert argv[argv.index("--run-dir") + 1].startswith(RUNS_PATH + "/")
    load_config(JOB_CONFIGS[Path(argv[1]).stem], REPO / config, argv[argv.index("--run-dir") + 2 :])


def test_rayjob_mounts_one_shared_claim_at_the_runs_path_on_every_pod():
    claims = set()
    for group, spec, _ in pod_specs(rayjob()):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = [m for c in spec["containers"] for m in c.get("volumeMounts", []) if m["mountPath"] == RUNS_PATH]
        assert len(mounts) == 1, f"{group}: {RUNS_PATH} mounted {len(mounts)} times"
        volume = volumes.get(mounts[0]["name"])
        assert volume and "persistentVolumeClaim" in volume, f"{group}: {RUNS_PATH} is not a PVC"
        assert not mounts[0].get("readOnly") and not mounts[0].get("subPath")
        claims.add(volume["persistentVolumeClaim"]["claimName"])
        for m in (m for c in spec["containers"] for m in c.get("volumeMounts", [])):
            assert m["name"] in volumes, f"{group}: volumeMount {m['name']} has no volume"
    assert len(claims) == 1, f"head and workers mount different claims at {RUNS_PATH}: {claims}"


def test_rayjob_cluster_has_the_gpus_its_config_places_and_uses_token_auth():
    job = rayjob()
    argv = shlex.split(job["spec"]["entrypoint"])
    cfg = load_config(OnMCPOConfig, REPO / argv[argv.index("--config") + 1])
    gpus = sum(
        replicas * int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
        for group, spec, replicas in pod_specs(job)
        if group != "head"
        for c in spec["containers"]
    )
    assert gpus >= cfg.cluster.num_gpus
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    pin = re.search(r'"ray\[default\]==([\d.]+)"', (REPO / "pyproject.toml").read_text())
    assert pin and cluster["rayVersion"] == pin.group(1)
    assert job["spec"]["shutdownAfterJobFinishes"] is True


# --------------------------------------------------------------------------- runtime env


def driver_runtime_env(monkeypatch) -> dict:
    """The runtime_env apo_pipeline.launch passes to ray.init when it joins a cluster (fake Ray)."""
    from apo_pipeline import launch

    calls = []
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(init=lambda **kw: calls.append(kw)))
    launch.init_ray(OnMCPOConfig(), "127.0.0.1:6379")
    return calls[0].get("runtime_env") or {}


def job_runtime_envs() -> dict[str, dict]:
    return {
        "runtime-env.yaml": load_yaml(DEPLOY / "runtime-env.yaml"),
        "kuberay-rayjob.yaml runtimeEnvYAML": yaml.safe_load(rayjob()["spec"]["runtimeEnvYAML"]),
    }


def test_runtime_env_uploads_the_checkout_without_runs_venv_or_caches():
    env = load_yaml(DEPLOY / "runtime-env.yaml")
    assert env["working_dir"] == "."
    for pattern in ("runs/", ".venv/", ".cache/"):
        assert pattern in env["excludes"], pattern


@pytest.mark.parametrize("name", ["runtime-env.yaml", "kuberay-rayjob.yaml runtimeEnvYAML"])
def test_job_runtime_env_merges_with_the_drivers(name, monkeypatch):
    """Ray refuses a job runtime env that repeats a field or env var the driver's ray.init sets."""
    env = job_runtime_envs()[name]
    assert env.get("working_dir"), name
    assert all(isinstance(v, str) for v in env.get("env_vars", {}).values()), f"{name}: env var values must be strings"
    driver = driver_runtime_env(monkeypatch)
    clash = set(env.get("env_vars", {})) & set(driver.get("env_vars", {}))
    clash |= (set(env) - {"env_vars"}) & (set(driver) - {"env_vars"})
    assert not clash, f"{name} repeats {sorted(clash)}, which apo_pipeline/launch.py's ray.init sets"


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


# --------------------------------------------------------------------------- GPU configs

GPU_CONFIG_FILES = sorted(p.name for p in GPU_CONFIGS.glob("*.yaml"))


def test_the_expected_gpu_configs_exist():
    assert set(GPU_CONFIG_FILES) >= set(EXPECTED_BATCH) | {"smoke-1gpu.yaml"}


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


@pytest.mark.parametrize("name, batch", sorted(EXPECTED_BATCH.items()))
def test_effective_batch(name, batch):
    cfg = gpu_config(name)
    assert cfg.learner.micro_batch_size * cfg.learner.grad_accum * cfg.cluster.learner_ranks == batch


@pytest.mark.parametrize("name", ["onmcpo-8b.yaml", "onmcpo-8b-colocated.yaml"])
def test_onmcpo_8b_is_the_papers_batched_online_setup(name):
    cfg = gpu_config(name)
    assert cfg.generation.temperatures == [0.6, 0.8, 1.0] and cfg.generation.num_candidates == 6
    assert cfg.loop.segments == 3 and cfg.algorithm.beta == 0.1 and cfg.algorithm.negatives == "mc"
    assert cfg.judge.backend == "llm" and "70B" in cfg.judge.model and cfg.cluster.judge_tp in (4, 8)
    assert "8B" in cfg.model.path and cfg.model.max_model_len == 4096 and cfg.generation.max_tokens == 1024
    assert cfg.learner.zero_stage == 3
    assert cfg.cluster.colocate == name.endswith("-colocated.yaml")
    if not cfg.cluster.colocate:
        assert cfg.sync.backend == "nccl"


def test_apo_configs():
    dpo, sppo = gpu_config("apo-8b-dpo.yaml"), gpu_config("apo-8b-sppo.yaml")
    for cfg in (dpo, sppo):
        assert cfg.loop.iterations == 3 and cfg.loop.alpha == 0.3 and cfg.cluster.num_gpus == 8
    assert dpo.algorithm.loss == "dpo"
    assert sppo.algorithm.loss == "sppo" and sppo.algorithm.beta == 1e-3
    assert sppo.generation.temperatures == [0.7] and sppo.generation.num_candidates == 5


def test_smoke_config_fits_one_gpu():
    cfg = gpu_config("smoke-1gpu.yaml")
    assert cfg.cluster.num_gpus == 1 and cfg.cluster.colocate and cfg.judge.backend == "reward"
    assert cfg.loop.segments == 1


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
