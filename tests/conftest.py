"""Shared fixtures: a real S3 endpoint (moto's server on 127.0.0.1), small configs, tmp run dirs."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: no spin-wait stalls on shared cores
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret-key-1234",
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Test folders of small CPU-bound models: one intra-op thread is faster than two for them, and never stalls
# when the 2 cores are shared (OpenMP spin-waiting under contention makes two threads many times slower).
ONE_THREAD_DIRS = ("classify", "diffusion", "eval")


@pytest.fixture(autouse=True)
def _one_thread(request):
    """Run the tests under ``ONE_THREAD_DIRS`` with ``torch.set_num_threads(1)``; restore afterwards."""
    if Path(str(request.node.path)).resolve().relative_to(ROOT / "tests").parts[0] not in ONE_THREAD_DIRS:
        yield
        return
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1, started once per session; yields its endpoint URL."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("moto server did not start")
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """Point the standard AWS variables at the moto server and create a fresh bucket; yields ``s3://bucket``."""
    import uuid

    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    import fsspec
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"ltaug-{uuid.uuid4().hex[:10]}"
    fs = fsspec.filesystem("s3", endpoint_url=s3_server)
    fs.mkdir(bucket)
    yield f"s3://{bucket}"
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def upload(s3):
    """upload(local_dir, prefix) copies a local folder tree to s3://bucket/prefix; returns the URI."""
    import fsspec

    def _up(local: Path, prefix: str) -> str:
        fs = fsspec.filesystem("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
        dst = f"{s3[len('s3://'):]}/{prefix}"
        for p in Path(local).rglob("*"):
            if p.is_file():
                fs.pipe_file(f"{dst}/{p.relative_to(local).as_posix()}", p.read_bytes())
        return f"{s3}/{prefix}"

    return _up


@pytest.fixture
def mnist_dir() -> Path:
    d = SHARED_DATA / "mnist"
    if not (d / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not present at {d} (../shared/data/mnist beside the checkout)")
    return d


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """The one private local Ray of the test session (``address="local"``: never a stray cluster), on loopback.

    Started after the S3 variables point at the moto server, so Ray's workers inherit the endpoint; the
    dashboard is on (Train-in-Tune needs it). Shut down at the end of the session (this process only)."""
    for k, v in {**S3_ENV, "AWS_ENDPOINT_URL": s3_server}.items():
        os.environ[k] = v
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"   # a private single-node Ray then binds 127.0.0.1
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=True, object_store_memory=200 * 2**20,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_two_nodes(s3_server, tmp_path_factory):
    """A real two-node Ray cluster on this machine: a head on 127.0.0.2 and a worker on 127.0.0.3, each a
    ``ray start --block`` process with 1 CPU, its own custom resource (``node_a`` / ``node_b``) and its own temp
    dir, with token authentication on (one random ``RAY_AUTH_TOKEN``). The nodes' environment carries the moto
    S3 endpoint (``S3_ENV`` + ``AWS_ENDPOINT_URL``): processes of a cluster one only connects to inherit the
    raylet's environment, not the driver's.

    Yields ``{"address": "127.0.0.2:P", "env": {...}, "ips": (...), "log_dir": Path}``. Run drivers as
    subprocesses with ``env`` (the auth variables live there, not in this process's ``os.environ``, so they
    never leak into the session's own ``ray_session`` or into other tests' ``ray`` CLI calls). Both processes
    are terminated by their pids at the end (SIGTERM: ``ray start --block`` then stops its own children);
    never ``ray stop``, which would kill every Ray on the host."""
    import secrets
    import shutil
    import signal
    import tempfile

    head_ip, worker_ip = "127.0.0.2", "127.0.0.3"
    log_dir = tmp_path_factory.mktemp("ray_two_nodes")
    ray_bin = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, **S3_ENV, "AWS_ENDPOINT_URL": s3_server, "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "60",
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",   # SIGTERM: stop at once (no drain wait)
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    # the session's private single-node Ray sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 in os.environ (it binds
    # 127.0.0.1 then); with it a joining node refuses to start, so the two-node cluster runs without it
    for k in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(k, None)

    def free_port(ip: str) -> int:
        with socket.socket() as s:
            s.bind((ip, 0))
            return s.getsockname()[1]

    port = free_port(head_ip)
    address = f"{head_ip}:{port}"
    # Short private temp dirs (unix socket paths are limited to ~107 bytes); a private head temp dir also keeps
    # /tmp/ray/ray_current_cluster untouched, so no other `ray.init()` on the host attaches to this cluster.
    temp_dirs = [tempfile.mkdtemp(prefix="ray2n-", dir="/tmp") for _ in range(2)]
    common = ["--block", "--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats"]
    cmds = {
        "head": [ray_bin, "start", "--head", f"--node-ip-address={head_ip}", f"--port={port}",
                 f"--ray-client-server-port={free_port(head_ip)}", "--include-dashboard=false",
                 '--resources={"node_a": 1}', f"--temp-dir={temp_dirs[0]}", *common],
        "worker": [ray_bin, "start", f"--address={address}", f"--node-ip-address={worker_ip}",
                   '--resources={"node_b": 1}', f"--temp-dir={temp_dirs[1]}", *common],
    }
    procs: dict[str, subprocess.Popen] = {}

    def tail(name: str) -> str:
        return (log_dir / f"{name}.log").read_text(errors="replace")[-3000:]

    def wait_started(name: str, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if "Ray runtime started" in (log_dir / f"{name}.log").read_text(errors="replace"):
                return
            if procs[name].poll() is not None:
                break
            time.sleep(0.5)
        pytest.fail(f"ray start ({name}) did not come up:\n{tail(name)}")

    def stop() -> None:
        for name in ("worker", "head"):
            p = procs.get(name)
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:   # last resort: its own process group (gcs, raylet, workers)
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        for d in temp_dirs:
            shutil.rmtree(d, ignore_errors=True)

    try:
        for name in ("head", "worker"):
            with open(log_dir / f"{name}.log", "wb") as out:
                procs[name] = subprocess.Popen(cmds[name], env=env, stdout=out, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, start_new_session=True)
            wait_started(name)
        probe = ("import ray, sys, time\n"
                 f"ray.init(address={address!r}, log_to_driver=False)\n"
                 "deadline = time.time() + 60\n"
                 "while sum(n['Alive'] for n in ray.nodes()) < 2 and time.time() < deadline:\n"
                 "    time.sleep(0.5)\n"
                 "print(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']))\n")
        r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
        if r.returncode != 0 or f"['{head_ip}', '{worker_ip}']" not in r.stdout:
            pytest.fail(f"two Ray nodes are not alive:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}\n{tail('head')}")
        yield {"address": address, "env": env, "ips": (head_ip, worker_ip), "log_dir": log_dir}
    finally:
        stop()
