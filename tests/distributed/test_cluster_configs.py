"""cluster/: every manifest validates against the published schemas (Ray's cluster-launcher schema from the
installed ray package; the KubeRay CRDs through the schema facts below); pods run as the IRSA ServiceAccount;
credentials are optional (no hard-wired Secret); token auth is on; nothing secret is in any file; the image is
built with constraints.txt from a context that excludes .venv/ and runs/."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
KUBE = CLUSTER / "kuberay"
SECRET_LIKE = re.compile(r"(AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+]{30,}|"
                         r"secret_access_key:\s*['\"]?[A-Za-z0-9/+]{20,}|-----BEGIN [A-Z ]*PRIVATE KEY-----|"
                         r"(auth_token|RAY_AUTH_TOKEN|password)\s*[:=]\s*['\"]?[A-Za-z0-9+/=_-]{16,}|"
                         r"postgres(ql)?://[\w.-]+:[^@\s<>]+@)", re.I)

# --- KubeRay CRD facts (ray-project/kuberay v1.7.0, ray-operator/config/crd/bases/ray.io_{rayclusters,rayjobs}.yaml,
# version v1): the properties, required fields, types and enums the manifests here touch. Kubernetes drops (or,
# with strict field validation, rejects) unknown fields, hence additionalProperties: false. Pod templates are
# checked against the PodSpec / Container field names of the same CRD.
_STR, _BOOL, _INT = {"type": "string"}, {"type": "boolean"}, {"type": "integer"}
_OBJ = {"type": "object"}
_STR_MAP = {"type": "object", "additionalProperties": _STR}
_TEMPLATE = {"type": "object", "additionalProperties": False, "required": ["spec"],
             "properties": {"metadata": _OBJ, "spec": {"type": "object", "required": ["containers"]}}}
_HEAD = {"type": "object", "additionalProperties": False, "required": ["template"], "properties": {
    **{k: _OBJ for k in ("headService", "ingressOptions", "labels", "resources")},
    "enableIngress": _BOOL, "rayStartParams": _STR_MAP, "serviceType": _STR, "template": _TEMPLATE}}
_WORKER = {"type": "object", "additionalProperties": False,
           "required": ["groupName", "maxReplicas", "minReplicas", "template"], "properties": {
               **{k: _OBJ for k in ("labels", "resources", "scaleStrategy")},
               **{k: _INT for k in ("idleTimeoutSeconds", "maxReplicas", "minReplicas", "numOfHosts", "priority",
                                    "replicas")},
               "groupName": _STR, "rayStartParams": _STR_MAP, "suspend": _BOOL, "template": _TEMPLATE}}
RAYCLUSTER_SPEC = {"type": "object", "additionalProperties": False, "required": ["headGroupSpec"], "properties": {
    **{k: _OBJ for k in ("autoscalerOptions", "gcsFaultToleranceOptions", "headServiceAnnotations",
                         "historyServerOptions", "networkPolicy", "tlsOptions", "upgradeStrategy")},
    "authOptions": {"type": "object", "additionalProperties": False, "properties": {
        "enableK8sTokenAuth": _BOOL, "mode": {"type": "string", "enum": ["disabled", "token"]},
        "secretName": _STR}},
    "enableInTreeAutoscaling": _BOOL, "managedBy": _STR, "rayVersion": _STR, "suspend": _BOOL,
    "headGroupSpec": _HEAD, "workerGroupSpecs": {"type": "array", "items": _WORKER}}}
RAYJOB_SPEC = {"type": "object", "additionalProperties": False, "properties": {
    **{k: _OBJ for k in ("clusterSelector", "deletionStrategy", "entrypointResources", "metadata",
                         "submitterConfig")},
    **{k: _INT for k in ("activeDeadlineSeconds", "backoffLimit", "preRunningDeadlineSeconds",
                         "ttlSecondsAfterFinished")},
    **{k: _STR for k in ("entrypoint", "jobId", "managedBy", "runtimeEnvYAML", "submissionMode")},
    "entrypointNumCpus": {"type": "number"}, "entrypointNumGpus": {"type": "number"},
    "shutdownAfterJobFinishes": _BOOL, "suspend": _BOOL, "rayClusterSpec": RAYCLUSTER_SPEC,
    "submitterPodTemplate": _TEMPLATE}}
POD_SPEC_FIELDS = {
    "activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "containers", "dnsConfig", "dnsPolicy",
    "enableServiceLinks", "ephemeralContainers", "hostAliases", "hostIPC", "hostNetwork", "hostPID", "hostUsers",
    "hostname", "hostnameOverride", "imagePullSecrets", "initContainers", "nodeName", "nodeSelector", "os",
    "overhead", "preemptionPolicy", "priority", "priorityClassName", "readinessGates", "resourceClaims",
    "resources", "restartPolicy", "runtimeClassName", "schedulerName", "schedulingGates", "schedulingGroup",
    "securityContext", "serviceAccount", "serviceAccountName", "setHostnameAsFQDN", "shareProcessNamespace",
    "subdomain", "terminationGracePeriodSeconds", "tolerations", "topologySpreadConstraints", "volumes"}
CONTAINER_FIELDS = {
    "args", "command", "env", "envFrom", "image", "imagePullPolicy", "lifecycle", "livenessProbe", "name", "ports",
    "readinessProbe", "resizePolicy", "resources", "restartPolicy", "restartPolicyRules", "securityContext",
    "startupProbe", "stdin", "stdinOnce", "terminationMessagePath", "terminationMessagePolicy", "tty",
    "volumeDevices", "volumeMounts", "workingDir"}
TOLERATION_FIELDS = {"effect", "key", "operator", "tolerationSeconds", "value"}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _service_account() -> str:
    (sa,) = _docs(KUBE / "serviceaccount.yaml")
    assert sa["kind"] == "ServiceAccount" and sa["apiVersion"] == "v1"
    arn = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", arn), arn
    return sa["metadata"]["name"]


def _check_pod(pod: dict, sa: str) -> None:
    """A pod spec: only PodSpec/Container fields, runs as the ServiceAccount, no hard-wired Secret."""
    assert set(pod) <= POD_SPEC_FIELDS, set(pod) - POD_SPEC_FIELDS
    assert pod.get("serviceAccountName") == sa
    for t in pod.get("tolerations", []):
        assert set(t) <= TOLERATION_FIELDS
    for c in pod["containers"]:
        assert set(c) <= CONTAINER_FIELDS, set(c) - CONTAINER_FIELDS
        assert c["name"] and c["image"]
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            assert ref is None or ref.get("optional") is True, e          # credentials stay optional
            assert not ("SECRET" in e["name"] or "KEY_ID" in e["name"] or "TOKEN" in e["name"]) or "value" not in e
        for src in c.get("envFrom", []):
            assert "secretRef" not in src or src["secretRef"].get("optional") is True, src
    for v in pod.get("volumes", []):
        assert "secret" not in v or v["secret"].get("optional") is True, v


def test_launcher_yaml_validates_against_ray_schema():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    jsonschema.validate(cfg, schema)
    assert cfg["head_node_type"] in cfg["available_node_types"]
    assert "2.60.0" in cfg["docker"]["image"]
    nodes = cfg["available_node_types"]
    for node in nodes.values():
        assert node["node_config"]["ImageId"].startswith("ami-")                 # the AMI is a parameter
    head = nodes[cfg["head_node_type"]]["node_config"]["IamInstanceProfile"]["Name"]
    workers = {n["node_config"]["IamInstanceProfile"]["Name"] for k, n in nodes.items() if k != cfg["head_node_type"]}
    assert head and workers and head not in workers                              # separate head / worker roles
    assert {".venv/", "runs/"} <= set(cfg["rsync_exclude"])
    assert all("RAY_AUTH_MODE=token" in c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
               if "ray start" in c)
    assert any("-c " in c and "constraints.txt" in c for c in cfg["setup_commands"])
    readme = (CLUSTER / "README.md").read_text()
    for name in (head, *workers):
        assert name in readme                                                    # policies documented
    assert "CUDA 13" in (CLUSTER / "aws-gpu.yaml").read_text() and "CUDA 13" in readme


def test_cuda_requirement_matches_constraints():
    """The stated driver requirement (CUDA 13) is the one the pinned torch build needs."""
    pins = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert "torch" in pins
    cu = {re.search(r"-cu(\d+)$", k).group(1) for k in pins if k.startswith("nvidia-") and re.search(r"-cu\d+$", k)}
    assert cu == {"13"}, cu


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob-generate.yaml"])
def test_kuberay_manifests_validate_against_crd(name):
    import jsonschema

    sa = _service_account()
    (doc,) = _docs(KUBE / name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"]
    spec = doc["spec"]
    if doc["kind"] == "RayJob":
        jsonschema.validate(spec, RAYJOB_SPEC)
        assert "jobs/generate.py" in spec["entrypoint"] and "resources.num_workers" in spec["entrypoint"]
        yaml.safe_load(spec["runtimeEnvYAML"])
        assert spec["shutdownAfterJobFinishes"] is True
        _check_pod(spec["submitterPodTemplate"]["spec"], sa)
        spec = spec["rayClusterSpec"]
    else:
        assert doc["kind"] == "RayCluster"
        jsonschema.validate(spec, RAYCLUSTER_SPEC)
    assert spec["rayVersion"] == "2.60.0"
    assert spec["authOptions"]["mode"] == "token"                                # Ray token auth on
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for g in groups:
        _check_pod(g["template"]["spec"], sa)
        for c in g["template"]["spec"]["containers"]:
            assert "2.60.0" in c["image"]
            assert any(m["mountPath"] == "/dev/shm" for m in c.get("volumeMounts", []))
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    for g in spec["workerGroupSpecs"]:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    gpu = [g for g in spec["workerGroupSpecs"]
           if any("nvidia.com/gpu" in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])]
    assert gpu
    for g in gpu:                                                                # GPU groups tolerate the GPU taint
        assert any(t["key"] == "nvidia.com/gpu" for t in g["template"]["spec"].get("tolerations", []))


def test_mlflow_server_manifest():
    sa = _service_account()
    docs = {d["kind"]: d for d in _docs(KUBE / "mlflow.yaml")}
    assert {"Deployment", "Service", "ConfigMap", "PersistentVolumeClaim"} <= set(docs)
    dep, svc, cm = docs["Deployment"], docs["Service"], docs["ConfigMap"]
    assert dep["apiVersion"] == "apps/v1" and svc["apiVersion"] == "v1"
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    _check_pod(pod["spec"], sa)
    (c,) = pod["spec"]["containers"]
    cmd = " ".join(c.get("command", []) + c.get("args", []))
    assert "mlflow server" in cmd and "--backend-store-uri" in cmd and "--artifacts-destination" in cmd
    assert "--host 0.0.0.0" in cmd and "--allowed-hosts" in cmd
    assert cm["data"]["BACKEND_STORE_URI"].startswith("sqlite:////")              # configurable, absolute path
    assert cm["data"]["ARTIFACTS_DESTINATION"].startswith("s3://")
    port = svc["spec"]["ports"][0]["port"]
    for name in ("raycluster.yaml", "rayjob-generate.yaml"):                     # the Ray pods point at it
        assert f"http://{svc['metadata']['name']}:{port}" in (KUBE / name).read_text()


def test_dockerfile_uses_constraints_and_dockerignore_excludes_venv_runs():
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:2\.60\.0-py311", text, re.M)
    assert re.search(r"pip install[^\n]*-c constraints\.txt[^\n]*-e \.", text)
    ignore = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip()
              and not ln.startswith("#")}
    for p in (".venv", "runs", ".git"):
        assert {p, p + "/", p + "/**"} & ignore, p
    assert any("__pycache__" in p for p in ignore)


def test_readme_walks_from_zero_to_job_submit():
    text = (CLUSTER / "README.md").read_text()
    for s in ("ray up -y cluster/aws-gpu.yaml", "ray job submit", "kubectl apply", "RAY_AUTH_MODE=token",
              "iam:PassRole", "ec2:RunInstances", "ec2:TerminateInstances", "s3:GetObject", "s3:PutObject",
              "eks.amazonaws.com/role-arn", "docker build", "tolerations", "ImageId"):
        assert s in text, s
    for block in re.findall(r"```json\n(.*?)```", text, re.S):                   # the policy sketches parse
        json.loads(block)
    assert len(re.findall(r"```json\n", text)) >= 2


def test_no_secrets_in_cluster_files():
    for p in [*CLUSTER.rglob("*"), ROOT / ".dockerignore"]:
        if p.is_file():
            assert not SECRET_LIKE.search(p.read_text()), p
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert not any("SECRET" in k or "KEY_ID" in k or "TOKEN" in k for k in env.get("env_vars", {}))
    for p in KUBE.glob("*.yaml"):                                                # no Secret objects shipped
        assert all(d.get("kind") != "Secret" for d in _docs(p)), p
