"""deploy/kuberay-rayjob.yaml and deploy/runtime-env.yaml: a hand-written ray.io/v1 RayJob schema
(below) the file passes and misspellings fail, the entrypoint runs an existing job and config on the
shared runs path, the cluster holds the GPUs its config places; the runtime env uploads the
checkout without runs, venv or caches and merges with the driver's.
"""

from __future__ import annotations

import copy
import re
import shlex
import sys
import types
from pathlib import Path

import jsonschema
import pytest
import yaml

from apo_pipeline.config import JOB_CONFIGS, OnMCPOConfig, load_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
RUNS_PATH = "/mnt/runs"


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


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
