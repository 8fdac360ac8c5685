"""`ray job submit` of jobs/generate.py to a local `ray start --head` cluster started by this test (own temp
dir and ports). Only the processes of that cluster are stopped, by pid; `ray stop` is never run."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fakes import tiny_diffusion_checkpoint

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def _ports(n: int) -> list[int]:
    socks, out = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        out.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return out


def _cluster_pids(temp_dir: str) -> list[int]:
    import psutil

    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in a for a in (p.info["cmdline"] or [])):
                pids.append(p.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


@pytest.fixture
def head_cluster():
    import psutil

    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")
    gcs, dash, agent, agent_grpc, metrics, rt_env, client, nm, om = _ports(9)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [RAY, "start", "--head", f"--temp-dir={temp_dir}", f"--port={gcs}", f"--dashboard-port={dash}",
           "--dashboard-host=127.0.0.1", f"--dashboard-agent-listen-port={agent}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
           f"--runtime-env-agent-port={rt_env}", f"--ray-client-server-port={client}", f"--node-manager-port={nm}",
           f"--object-manager-port={om}", "--num-cpus=2", "--object-store-memory=150000000", "--disable-usage-stats",
           "--include-dashboard=true"]
    started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        yield f"http://127.0.0.1:{dash}", env
    finally:
        procs = [psutil.Process(p) for p in _cluster_pids(temp_dir) if psutil.pid_exists(p)]
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=15)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


def test_ray_job_submit_generate(head_cluster, tmp_path):
    address, env = head_cluster
    ckpt = tiny_diffusion_checkpoint(str(tmp_path / "d.pt"))
    out = tmp_path / "out"
    runtime_env = {"excludes": ["/.git", "/runs", "/mlruns", "/benchmarks", "/notebooks", "*.db", "/tests", "/cluster"],
                   "env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}}
    sets = [f"model.checkpoint={ckpt}", f"generate.output_uri={out}", f"run.output_dir={tmp_path}/runs",
            "tracking.uri=none", "sample.steps=2", "generate.shard_size=16", "generate.score_iters=1",
            "generate.budget=[0,8,8,4]", "resources.num_workers=1"]
    cmd = [RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT),
           "--runtime-env-json", json.dumps(runtime_env), "--", sys.executable, "jobs/generate.py",
           *[a for s in sets for a in ("--set", s)]]
    t0 = time.time()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=480)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "succeeded" in (r.stdout + r.stderr).lower()
    man = json.loads((out / ".ltaug" / "manifest.json").read_text())
    assert man["written"] == 20 and man["complete"]
    print(f"ray job submit round trip: {time.time() - t0:.1f}s")
