"""Security: credentials never reach stdout/stderr, written files, S3 objects, the MLflow store or its params;
checkpoints are loaded with ``weights_only=True`` (see also test_training_faults: a pickled callable is
refused and never runs); cluster files reference secrets instead of holding them."""
from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ltaug import storage

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "generate"))
from fakes import gen_overrides, tiny_classifier_checkpoint, tiny_diffusion_checkpoint  # noqa: E402

FAKE = {"AWS_ACCESS_KEY_ID": "AKIALTAUGFAKEKEY0042",
        "AWS_SECRET_ACCESS_KEY": "ltaugFakeSecret/Zq9x7Wv3+Rt5Yu8Io1Pa",
        "AWS_SESSION_TOKEN": "ltaugFakeSessionToken-Kp2mNb4Vc6Xz8"}


def _leaks(blob: bytes) -> list[str]:
    return [k for k, v in FAKE.items() if v.encode() in blob]


@pytest.mark.s3
def test_credentials_never_reach_outputs_logs_or_mlflow(s3, tmp_path, monkeypatch):
    for k, v in FAKE.items():
        monkeypatch.setenv(k, v)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    diff = tiny_diffusion_checkpoint(str(tmp_path / "d.pt"))
    clf = tiny_classifier_checkpoint(str(tmp_path / "c.pt"), radius_scale=0.6)
    storage.write_bytes(f"{s3}/models/d.pt", Path(diff).read_bytes())
    out = f"{s3}/synthetic/gen"
    db = tmp_path / "mlflow.db"
    args = gen_overrides(f"{s3}/models/d.pt", out, str(tmp_path / "runs"), f"classifier.checkpoint={clf}",
                         "resources.num_workers=0", "sample.steps=2", f"tracking.uri=sqlite:///{db}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = str(ROOT / "jobs" / "generate.py")      # run from tmp_path: MLflow's default ./mlruns artifacts land there
    res = subprocess.run([sys.executable, job, *args], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ver = subprocess.run([sys.executable, job, *args, "--verify"], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=300)
    assert ver.returncode == 0, ver.stderr[-3000:]
    run_dir = Path(res.stdout.strip().splitlines()[-1])

    # stdout / stderr of both runs
    for p in (res, ver):
        assert not _leaks((p.stdout + p.stderr).encode())
    # every local file written (run dir, resolved config, summary, manifest copy, MLflow DB and artifacts)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".pt"]
    assert any(p.name == "config.yaml" for p in written) and any(p.name == "summary.json" for p in written)
    assert db in written
    for p in written:
        assert not _leaks(p.read_bytes()), p
    # every object written to the bucket (shards, stats, plan, manifest)
    fs, path = storage.get_fs(s3)
    objs = [o for o in fs.find(path) if not o.endswith(".pt")]
    assert any(o.endswith("manifest.json") for o in objs) and any(o.endswith(".tar") for o in objs)
    for o in objs:
        assert not _leaks(fs.cat_file(o)), o
    # MLflow: params, tags and metrics as stored, read back through SQL (no secret anywhere in the store)
    con = sqlite3.connect(db)
    try:
        params = dict(con.execute("select key, value from params").fetchall())
        tags = con.execute("select key, value from tags").fetchall()
        artifact_uris = [r[0] for r in con.execute("select artifact_uri from runs").fetchall()]
    finally:
        con.close()
    assert params and "generate.output_uri" in params
    for k, v in list(params.items()) + tags:
        assert not _leaks(f"{k}={v}".encode()), k
        assert not re.search(r"(secret|password|token|access_key)", k, re.I) or not v, k
    for a in artifact_uris:                         # artifacts live under tmp_path, so the file scan covered them
        assert storage.strip_scheme(a).startswith(str(tmp_path)), a
    assert json.loads((run_dir / "summary.json").read_text())["output_uri"] == out


def test_redact_covers_every_secret_variable_and_url_passwords(monkeypatch):
    for k, v in FAKE.items():
        monkeypatch.setenv(k, v)
    msg = storage.redact(f"denied for {FAKE['AWS_ACCESS_KEY_ID']} with {FAKE['AWS_SECRET_ACCESS_KEY']} "
                         f"token {FAKE['AWS_SESSION_TOKEN']} at http://alice:hunter22@mlflow:5000/")
    assert not _leaks(msg.encode()) and "hunter22" not in msg and "<AWS_SECRET_ACCESS_KEY>" in msg


def test_checkpoints_are_loaded_weights_only():
    """Every torch.load in the package passes weights_only=True (a grep: no unsafe load path can sneak in)."""
    offenders = []
    for p in (ROOT / "ltaug").rglob("*.py"):
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, offenders


def test_cluster_files_reference_secrets_never_hold_them():
    import yaml

    files = [p for p in (ROOT / "cluster").rglob("*") if p.is_file()]
    assert files
    value = re.compile(r"(AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|(secret|password|token)[\w-]*\s*[:=]\s*['\"]?[A-Za-z0-9/+=]{16,})", re.I)
    for p in files:
        assert not value.search(p.read_text()), p
    for p in files:
        if p.suffix not in (".yaml", ".yml"):
            continue
        for doc in yaml.safe_load_all(p.read_text()):
            for env in _env_lists(doc):
                for e in env:
                    if re.search(r"SECRET|KEY_ID|TOKEN|PASSWORD", str(e.get("name", ""))):
                        assert "value" not in e and "valueFrom" in e, (p, e)


def _env_lists(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "env" and isinstance(v, list):
                yield v
            else:
                yield from _env_lists(v)
    elif isinstance(node, list):
        for v in node:
            yield from _env_lists(v)
