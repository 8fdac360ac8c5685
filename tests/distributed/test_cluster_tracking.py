"""Storage and tracking across nodes (issue 12, item 2).

On the real two-node cluster (``ray_two_nodes``) with the moto S3 endpoint and a real ``mlflow server``
(``mlflow_server``: SQLite backend, artifacts proxied to S3), ONE driver subprocess joins the cluster and runs
the ``train_diffusion`` job (``ltaug.cli.train_diffusion_main``, the same ``job_main`` as
``jobs/train_diffusion.py``) several times, so the ~10 s connection is paid once:

- a local ``run.output_dir``, a SQLite ``tracking.uri`` and ``resources.use_gpu=true`` are refused before any
  work, each naming its key, with nothing created;
- ``run.shared_fs=true`` lets the same local paths through the preflight;
- a 2-worker run spread over both nodes (checked in the GCS actor table) writes to ``s3://``, has its last
  worker *killed* (``os._exit``) at a checkpoint step and resumed by Ray Train; the tracking server then
  holds every step of the metric history (including the step the killed group never delivered) and the
  artifacts, stored in the server's S3 store.

The unit tests at the bottom check the preflight rules without Ray."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["data.image_size=8", "model.ch=8", "model.ch_mult=[1,2]", "model.attn_resolutions=[]", "model.groups=4",
        "model.dropout=0.0", "train.batch_size=16", "train.warmup=0", "diffusion.timesteps=50", "sample.steps=2",
        "train.sample_every=0"]

DRIVER = r"""
import contextlib, io, json, os, sys
from ltaug import cli
from ltaug.config import load_config
from ltaug.distributed import RayLauncher

spec = json.loads(sys.argv[1])
results = {}


def job(name, sets, fail_at_step=None):
    real = cli.make_launcher
    if fail_at_step is not None:   # the test hook: the last rank's process dies once at this step
        cli.make_launcher = lambda cfg: RayLauncher(cfg, fail_at_step=fail_at_step, fail_mode="exit")
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.train_diffusion_main(sets)
    finally:
        cli.make_launcher = real
    results[name] = {"rc": rc, "stdout": out.getvalue()[-4000:], "stderr": err.getvalue()[-4000:]}


for name, sets in spec["refused"].items():
    job(name, spec["common"] + sets)
cfg = load_config(None, spec["common"] + spec["shared"])
try:
    RayLauncher(cfg).preflight(cfg)
    results["shared_fs"] = {"rc": 0}
except Exception as e:
    results["shared_fs"] = {"rc": 1, "stderr": f"{type(e).__name__}: {e}"}
job("train", spec["common"] + spec["train"], fail_at_step=spec["fail_at_step"])
from ray._private import state   # Train V2 worker actors from the GCS actor table (dead ones are kept)
results["worker_ips"] = sorted(a["Address"]["IPAddress"] for a in state.actors().values()
                               if "TrainWorker" in a["ActorClassName"])
print("RESULTS " + json.dumps(results))
"""


def _ls(fs, prefix: str) -> list[str]:
    return fs.find(prefix) if fs.exists(prefix) else []


@pytest.mark.ray
@pytest.mark.slow
def test_two_node_run_tracks_on_the_server_and_refuses_node_local_paths(ray_two_nodes, mlflow_server, s3,
                                                                         tmp_path):
    import fsspec
    from mlflow.tracking import MlflowClient

    cluster, server = ray_two_nodes, mlflow_server
    out = f"{s3}/runs"
    local = tmp_path / "local_runs"
    sqlite = tmp_path / "mlflow.db"
    # half a CPU per worker: both would fit on one 1-CPU node, so only resources.placement=spread puts them on two
    common = [f"resources.ray_address={cluster['address']}", "resources.num_workers=2", "resources.placement=spread",
              "resources.cpus_per_worker=0.5", "resources.max_failures=2", *TINY]
    spec = {
        "common": common,
        "refused": {
            "output_dir": [f"run.output_dir={local}", f"tracking.uri={server['uri']}"],
            "tracking": [f"run.output_dir={out}/refused", f"tracking.uri=sqlite:///{sqlite}"],
            "gpu": [f"run.output_dir={out}/refused", f"tracking.uri={server['uri']}", "resources.use_gpu=true"],
        },
        "shared": [f"run.output_dir={local}", f"tracking.uri=sqlite:///{sqlite}", f"data.cache_dir={local}/data",
                   "run.shared_fs=true"],
        # reports at every step, checkpoints at 2, 4, 6; the last rank dies at step 4, after rank 0 wrote ckpt-4:
        # Ray's latest checkpoint is 2, the loop resumes from ckpt-4, so step 4 is delivered only by the replay
        "train": [f"run.output_dir={out}", f"tracking.uri={server['uri']}", "train.steps=6", "train.log_every=1",
                  "train.ckpt_every=2"],
        "fail_at_step": 4,
    }
    env = {k: v for k, v in cluster["env"].items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL")}
    r = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(spec)], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=900)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert r.returncode == 0 and lines, f"{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    res = json.loads(lines[-1][len("RESULTS "):])

    def refused(name: str, *needles: str) -> str:
        got = res[name]
        err = [ln for ln in got["stderr"].splitlines() if ln.startswith("error:")]
        assert got["rc"] == 2 and len(err) == 1, got
        for n in needles:
            assert n in err[0], err[0]
        return err[0]

    refused("output_dir", f"run.output_dir={local}", "2 alive nodes", "s3://", "run.shared_fs=true")
    refused("tracking", f"tracking.uri=sqlite:///{sqlite}", "http://", "2 alive nodes")
    refused("gpu", "resources.use_gpu=true", "no GPU")
    fs = fsspec.filesystem("s3")
    assert not local.exists() and not sqlite.exists()             # refused before anything was created
    assert _ls(fs, f"{out}/refused") == []
    assert res["shared_fs"] == {"rc": 0}, res["shared_fs"]        # declared shared: the preflight lets it through

    train = res["train"]
    assert train["rc"] == 0, f"{train['stdout']}\n{train['stderr']}"
    run_dir = train["stdout"].strip().splitlines()[-1]
    assert run_dir.startswith(out), run_dir
    summary = json.loads(fs.cat_file(f"{run_dir}/summary.json"))
    assert summary["world_size"] == 2 and summary["steps"] == 6
    assert summary["resumed_from"] == 4                          # the killed group resumed from ckpt-4
    assert fs.exists(f"{run_dir}/_injected_failure_diffusion")    # the worker really was killed once
    assert sorted(set(res["worker_ips"])) == sorted(cluster["ips"]), res["worker_ips"]   # spread over both nodes

    client = MlflowClient(server["uri"])
    run_id = summary["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in ("loss", "lr", "step"):
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert sorted(set(steps)) == [1, 2, 3, 4, 5, 6], (key, sorted(steps))   # no step missing
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"samples", "checkpoints", "summary.json", "config.yaml"} <= arts, arts
    assert [a.path for a in client.list_artifacts(run_id, "samples")] == ["samples/grid-000000006.png"]
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/ckpt-000000006.pt"]
    stored = _ls(fs, f"{server['bucket']}/mlartifacts")                  # the server's artifact store: S3
    assert any(p.endswith(f"{run_id}/artifacts/samples/grid-000000006.png") for p in stored), stored[:20]


# ---------------------------------------------------------------------------------------------- no Ray


def _cfg(*sets: str):
    from ltaug.config import load_config

    return load_config(None, list(sets))


@pytest.mark.parametrize("sets, key", [
    (["run.output_dir=/data/runs", "tracking.uri=http://mlflow:5000"], "run.output_dir=/data/runs"),
    (["run.output_dir=s3://b/runs", "tracking.uri=http://mlflow:5000", "generate.output_uri=/data/gen"],
     "generate.output_uri=/data/gen"),
    (["run.output_dir=s3://b/runs", "tracking.uri=http://mlflow:5000", "data.cache_dir=/data/cache"],
     "data.cache_dir=/data/cache"),
    (["run.output_dir=s3://b/runs", "tracking.uri=sqlite:////data/mlflow.db"], "tracking.uri=sqlite:////data/mlflow.db"),
    (["run.output_dir=s3://b/runs", "tracking.uri=file:///data/mlruns"], "tracking.uri=file:///data/mlruns"),
    (["run.output_dir=s3://b/runs"], "tracking.uri=(empty: the embedded SQLite store"),
])
def test_multinode_refuses_node_local_locations(sets, key, monkeypatch):
    from ltaug.config import ConfigError
    from ltaug.distributed.cluster import check_multinode_storage

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _cfg(*sets)
    with pytest.raises(ConfigError) as e:
        check_multinode_storage(cfg, 2)
    msg = str(e.value)
    assert msg.startswith(key) and "2 alive nodes" in msg and "run.shared_fs=true" in msg, msg
    assert ("s3://" if not key.startswith("tracking") else "http://") in msg
    check_multinode_storage(cfg, 1)                                   # one node: every local path is fine
    check_multinode_storage(_cfg(*sets, "run.shared_fs=true"), 2)     # declared shared mounts: accepted


def test_multinode_accepts_remote_storage_and_a_tracking_server_from_the_env(monkeypatch):
    from ltaug.config import ConfigError
    from ltaug.distributed.cluster import check_gpu, check_multinode_storage

    ok = ["run.output_dir=s3://b/runs", "generate.output_uri=s3://b/gen", "data.cache_dir=s3://b/cache"]
    for uri in ("http://mlflow:5000", "https://mlflow.example", "none"):
        check_multinode_storage(_cfg(*ok, f"tracking.uri={uri}"), 3)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")   # tracking.uri unset: the env var counts
    check_multinode_storage(_cfg(*ok), 3)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////data/m.db")
    with pytest.raises(ConfigError, match=r"^tracking\.uri=sqlite:////data/m\.db"):
        check_multinode_storage(_cfg(*ok), 3)
    with pytest.raises(ConfigError, match=r"^resources\.use_gpu=true .* no GPU resources .*CPU=2"):
        check_gpu(_cfg("resources.use_gpu=true"), {"CPU": 2.0, "memory": 1e9})
    check_gpu(_cfg("resources.use_gpu=true"), {"CPU": 2.0, "GPU": 1.0})
    check_gpu(_cfg(), {"CPU": 2.0})


def test_report_replay_logs_every_step_once_in_order():
    from ltaug.distributed.train import WorkerTracker, log_report
    from ltaug.distributed.world import REPLAY

    class Rec:
        def __init__(self):
            self.logged = []

        def log_metrics(self, m, step=None):
            self.logged.append((step, m["loss"]))

    t = Rec()
    assert log_report(t, {"loss": 5.0, "step": 5, REPLAY: [{"loss": 3.0, "step": 3}, {"loss": 4.0, "step": 4}]}) == 5
    assert t.logged == [(3, 3.0), (4, 4.0), (5, 5.0)]
    with pytest.raises(RuntimeError, match="workers never write to the tracking store"):
        WorkerTracker("r").log_artifact("x")
