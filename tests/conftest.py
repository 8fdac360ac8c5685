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


SESSION_RAY = ("ray_session", "ray_local")   # the session's private single-node Ray (one per xdist worker)
# Seconds each session-Ray file's Ray tests took in a 2-worker run (2026-12-02, a 2-core Xeon): only to split them
# into two groups of about equal time, one per worker; a file not listed weighs DEFAULT_RAY_WEIGHT.
RAY_WEIGHTS = {"tests/distributed/test_tune_ray.py": 200, "tests/distributed/test_train_ray.py": 195,
               "tests/distributed/test_generate_ray.py": 125, "tests/distributed/test_jobs_ray.py": 67,
               "tests/reliability/test_training_faults.py": 55, "tests/reliability/test_generation_faults.py": 46,
               "tests/distributed/test_infonce_gather.py": 38}
DEFAULT_RAY_WEIGHT = 20
RAY_GROUPS = ("ray-a", "ray-b")


def _session_ray_tests(source: str) -> list[str]:
    """Names (``test_x`` or ``TestC::test_x``) of the tests in ``source`` that take a ``SESSION_RAY`` fixture."""
    import ast

    def takes(fn: ast.AST) -> bool:
        return isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.name.startswith("test") and \
            any(a.arg in SESSION_RAY for a in fn.args.args + fn.args.kwonlyargs)

    out = []
    for node in ast.parse(source).body:
        if takes(node):
            out.append(node.name)
        elif isinstance(node, ast.ClassDef):
            out += [f"{node.name}::{f.name}" for f in node.body if takes(f)]
    return out


def _ray_test_groups() -> dict[str, str]:
    """Test id (``file::name``, parameters dropped) or test file (path as in node ids) -> its Ray group.

    The tests that take a ``SESSION_RAY`` fixture run on the session's Ray of their worker, in ``RAY_GROUPS``: whole
    files, split between the groups by ``RAY_WEIGHTS`` (largest first, each to the lighter group), so the two
    longest chains of Ray tests run side by side, each worker on a private Ray of its own (fixtures are per worker
    process). The other tests of those files are not grouped. ``own-ray``: the other Ray files, whole
    (everything else under tests/distributed, ``ray_two_nodes``, clusters a test starts itself, each on its own
    loopback addresses and ports), in one worker, in order."""
    session: dict[str, list[str]] = {}
    out: dict[str, str] = {}
    for f in sorted((ROOT / "tests").rglob("test_*.py")):
        text, rel = f.read_text(), f.relative_to(ROOT).as_posix()
        if any(n in text for n in SESSION_RAY):
            names = _session_ray_tests(text)
            if not names:
                raise RuntimeError(f"{rel} names a session-Ray fixture but no test takes it as an argument: "
                                   f"take it directly, so the scheduler (tests/conftest.py) can group the test")
            session[rel] = names
        elif f.parent.name == "distributed" or "mark.ray" in text or "ray_two_nodes" in text:
            out[rel] = "own-ray"
    load = dict.fromkeys(RAY_GROUPS, 0)
    for rel in sorted(session, key=lambda r: (-RAY_WEIGHTS.get(r, DEFAULT_RAY_WEIGHT), r)):
        group = min(RAY_GROUPS, key=lambda g: (load[g], g))
        load[group] += RAY_WEIGHTS.get(rel, DEFAULT_RAY_WEIGHT)
        out.update({f"{rel}::{name}": group for name in session[rel]})
    return out


def _scope(groups: dict[str, str], nodeid: str) -> str:
    """The xdist scope of a test: its group (by test id, then by file), else the test alone."""
    test = nodeid.split("[", 1)[0]
    return groups.get(test) or groups.get(nodeid.split("::", 1)[0], nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist (``./dev test`` runs several workers): each Ray group (``_ray_test_groups``) runs in one worker,
    in order - the session-Ray groups each on that worker's own Ray, the ``own-ray`` files one cluster at a time -
    and every other test is load-balanced one by one beside them (xdist's ``xdist_group`` would do this, but its
    node-id suffix no longer takes effect on pytest 9). Scopes are handed out in collection order, the Ray groups first
    (``pytest_collection_modifyitems``)."""
    from xdist.scheduler import LoadScopeScheduling

    groups = _ray_test_groups()
    config.option.loadscopereorder = False      # scopes in collection order: the Ray groups first (below)

    class RayTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _scope(groups, nodeid)

    return RayTogether(config, log)


def pytest_collection_modifyitems(config, items):
    """The Ray groups first, in ``RAY_GROUPS`` then ``own-ray`` order (each group's tests in their own order), so
    each starts on a worker of its own at once; the rest after them, as collected."""
    groups = _ray_test_groups()
    rank = {g: i for i, g in enumerate((*RAY_GROUPS, "own-ray"))}
    items.sort(key=lambda it: rank.get(_scope(groups, it.nodeid), len(rank)))


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
    """A real two-node Ray cluster on this machine (``benchmarks/cluster.py``): a head on 127.0.0.2 and a worker on
    127.0.0.3, each a ``ray start --block`` process with 1 CPU, its own custom resource (``node_a`` / ``node_b``)
    and its own temp dir, with token authentication on (one random ``RAY_AUTH_TOKEN``). The nodes' environment
    carries the moto S3 endpoint (``S3_ENV`` + ``AWS_ENDPOINT_URL``): processes of a cluster one only connects to
    inherit the raylet's environment, not the driver's.

    Yields ``{"address": "127.0.0.2:P", "env": {...}, "ips": (...), "log_dir": Path}``. Run drivers as
    subprocesses with ``env`` (the auth variables live there, not in this process's ``os.environ``, so they
    never leak into the session's own ``ray_session`` or into other tests' ``ray`` CLI calls; drivers name the
    cluster with ``resources.ray_address``). Both processes are terminated by their pids at the end; never
    ``ray stop``, which would kill every Ray on the host. The session's private single-node Ray sets
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (it binds 127.0.0.1 then); with it a joining node refuses to start,
    so the helper drops it from the nodes' environment."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from cluster import two_nodes

    extra = {**S3_ENV, "AWS_ENDPOINT_URL": s3_server, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "60"}
    cm = two_nodes(cpus=1, extra_env=extra, resources=({"node_a": 1}, {"node_b": 1}),
                   log_dir=tmp_path_factory.mktemp("ray_two_nodes"))
    try:
        cluster = cm.__enter__()
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield {**cluster, "env": {k: v for k, v in cluster["env"].items() if k != "RAY_ADDRESS"}}
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory):
    """A real ``mlflow server`` process on 127.0.0.1 (one uvicorn worker), its backend a SQLite file in a tmp dir
    and its artifact store on the moto S3 endpoint (``--artifacts-destination s3://<bucket>/mlartifacts``:
    artifacts are proxied through the server, so clients need no S3 credentials; the server process gets the
    moto env, ``MLFLOW_S3_ENDPOINT_URL`` included). Waited for on ``/health`` (its first start runs the SQLite
    migrations: several seconds), terminated by its pid at the end of the session.

    Yields ``{"uri": "http://127.0.0.1:P", "bucket": "s3://...", "env": {...}}`` (``env``: what a client
    process needs besides ``MLFLOW_TRACKING_URI``)."""
    import signal
    import urllib.request
    import uuid

    import fsspec

    d = tmp_path_factory.mktemp("mlflow_server")
    bucket = f"ltaug-mlflow-{uuid.uuid4().hex[:8]}"
    s3_env = {**S3_ENV, "AWS_ENDPOINT_URL": s3_server, "MLFLOW_S3_ENDPOINT_URL": s3_server}
    fs = fsspec.filesystem("s3", endpoint_url=s3_server, key=S3_ENV["AWS_ACCESS_KEY_ID"],
                           secret=S3_ENV["AWS_SECRET_ACCESS_KEY"], skip_instance_cache=True)
    fs.mkdir(bucket)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    log = open(d / "server.log", "wb")
    proc = subprocess.Popen([mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{d}/mlflow.db",
                             "--artifacts-destination", f"s3://{bucket}/mlartifacts"],
                            env={**os.environ, **s3_env, "MLFLOW_TRACKING_URI": "",
                                 # no huey job consumers (three processes that ltaug never uses)
                                 "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() - t0 > 300:
                pytest.fail(f"mlflow server did not come up:\n{(d / 'server.log').read_text(errors='replace')[-3000:]}")
            time.sleep(0.3)
        yield {"uri": url, "bucket": f"s3://{bucket}", "env": s3_env, "startup_s": time.time() - t0,
               "log": d / "server.log"}
    finally:
        if proc.poll() is None:
            proc.terminate()                        # this server (and its uvicorn worker) only, by pid
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)   # its own process group (start_new_session)
                proc.wait(10)
        log.close()
