"""cluster/: the launcher YAML validates against Ray's own schema; KubeRay manifests carry the required fields;
no secrets anywhere (credentials come from Kubernetes secrets or instance roles)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
SECRET_LIKE = re.compile(r"(AKIA[0-9A-Z]{16}|aws_secret_access_key\s*[:=]\s*\S+|secret_access_key:\s*['\"]?[A-Za-z0-9/+]{20,})",
                         re.I)


def test_launcher_yaml_validates_against_ray_schema():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    jsonschema.validate(cfg, schema)
    assert cfg["head_node_type"] in cfg["available_node_types"]
    assert "2.60.0" in cfg["docker"]["image"]
    for node in cfg["available_node_types"].values():
        assert node["node_config"]["IamInstanceProfile"]["Name"]      # S3 through an instance role


def _containers(spec):
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]], groups


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob-generate.yaml"])
def test_kuberay_manifests(name):
    doc = yaml.safe_load((CLUSTER / "kuberay" / name).read_text())
    assert doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"]
    if doc["kind"] == "RayJob":
        assert "jobs/generate.py" in spec["entrypoint"] and "resources.num_workers" in spec["entrypoint"]
        yaml.safe_load(spec["runtimeEnvYAML"])
        assert spec["shutdownAfterJobFinishes"] is True
        spec = spec["rayClusterSpec"]
    else:
        assert doc["kind"] == "RayCluster"
    assert spec["rayVersion"] == "2.60.0"
    containers, groups = _containers(spec)
    assert all("2.60.0" in c["image"] for c in containers)
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    for g in spec["workerGroupSpecs"]:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    for c in containers:
        env = {e["name"]: e for e in c.get("env", [])}
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            if k in env:
                assert "value" not in env[k] and env[k]["valueFrom"]["secretKeyRef"]["name"]
        assert any(m["mountPath"] == "/dev/shm" for m in c.get("volumeMounts", []))


def test_no_secrets_in_cluster_files():
    for p in CLUSTER.rglob("*"):
        if p.is_file():
            assert not SECRET_LIKE.search(p.read_text()), p
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert not any("SECRET" in k or "KEY_ID" in k or "TOKEN" in k for k in env.get("env_vars", {}))
