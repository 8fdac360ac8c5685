"""A real two-node Ray cluster on loopback, for benchmarks and for ``tests/conftest.py``'s ``ray_two_nodes``: head
on 127.0.0.2, worker on 127.0.0.3, each a ``ray start --block`` process with ``cpus`` CPUs, its own custom
resources and its own temp dir, token authentication on (one random ``RAY_AUTH_TOKEN``). Stopped by the pids of
the two processes (SIGTERM; their own process group as a last resort) - never ``ray stop``.

    with two_nodes() as c:
        subprocess.run([...], env=c["env"])     # drivers connect through RAY_ADDRESS in c["env"]
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"


def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def two_nodes(cpus: float = 1, object_store_mb: int = 100, extra_env: dict | None = None,
              resources: tuple[dict, dict] = ({}, {}), log_dir: Path | None = None) -> Iterator[dict]:
    """Yields ``{"address", "env" (with RAY_ADDRESS), "ips", "log_dir"}``; raises RuntimeError (with the nodes' log
    tails) when a node does not come up."""
    import json

    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="bench2n-logs-"))
    ray_bin = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, **(extra_env or {}), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for k in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(k, None)
    port = _free_port(HEAD_IP)
    address = f"{HEAD_IP}:{port}"
    temp_dirs = [tempfile.mkdtemp(prefix="rayb2n-", dir="/tmp") for _ in range(2)]
    common = ["--block", f"--num-cpus={cpus}", f"--object-store-memory={object_store_mb * 10**6}",
              "--disable-usage-stats"]
    cmds = {"head": [ray_bin, "start", "--head", f"--node-ip-address={HEAD_IP}", f"--port={port}",
                     f"--ray-client-server-port={_free_port(HEAD_IP)}", "--include-dashboard=false",
                     f"--temp-dir={temp_dirs[0]}", f"--resources={json.dumps(resources[0])}", *common],
            "worker": [ray_bin, "start", f"--address={address}", f"--node-ip-address={WORKER_IP}",
                       f"--temp-dir={temp_dirs[1]}", f"--resources={json.dumps(resources[1])}", *common]}
    procs: dict[str, subprocess.Popen] = {}

    def started(name: str, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if "Ray runtime started" in (log_dir / f"{name}.log").read_text(errors="replace"):
                return
            if procs[name].poll() is not None:
                break
            time.sleep(0.5)
        raise RuntimeError(f"ray start ({name}) did not come up:\n"
                           + (log_dir / f"{name}.log").read_text(errors="replace")[-3000:])

    try:
        for name in ("head", "worker"):
            with open(log_dir / f"{name}.log", "wb") as out:
                procs[name] = subprocess.Popen(cmds[name], env=env, stdout=out, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, start_new_session=True)
            started(name)
        probe = ("import ray, time\n"
                 f"ray.init(address={address!r}, log_to_driver=False)\n"
                 "deadline = time.time() + 60\n"
                 "while sum(n['Alive'] for n in ray.nodes()) < 2 and time.time() < deadline:\n"
                 "    time.sleep(0.5)\n"
                 "print(sum(n['Alive'] for n in ray.nodes()))\n")
        r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=180)
        if r.returncode != 0 or r.stdout.strip().splitlines()[-1:] != ["2"]:
            raise RuntimeError(f"two Ray nodes are not alive:\n{r.stdout[-1000:]}\n{r.stderr[-2000:]}")
        yield {"address": address, "env": {**env, "RAY_ADDRESS": address}, "ips": (HEAD_IP, WORKER_IP),
               "log_dir": log_dir}
    finally:
        for name in ("worker", "head"):
            p = procs.get(name)
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        for d in temp_dirs:
            shutil.rmtree(d, ignore_errors=True)


__all__ = ["two_nodes", "HEAD_IP", "WORKER_IP"]
