"""A real two-node Ray cluster on this machine (``ray_two_nodes``: head on 127.0.0.2, worker on 127.0.0.3, token
auth on): ``jobs/train_diffusion.py`` joins it through ``resources.ray_address``, trains with 2 DDP workers of
1 CPU each (each node has exactly 1 CPU, so the workers must spread) and writes its run to the moto S3
endpoint; the GCS actor table then shows the two Train workers on the two nodes.

The drivers run as subprocesses so this cluster never mixes with the session's own local Ray."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TINY = ["data.image_size=8", "model.ch=8", "model.ch_mult=[1,2]", "model.attn_resolutions=[]", "model.groups=4",
        "train.steps=4", "train.batch_size=16", "diffusion.timesteps=50", "sample.steps=2", "tracking.uri=none"]

# Train V2 worker actors, read from the GCS actor table (no dashboard / State API needed; dead actors are kept).
WORKERS_BY_NODE = """
import json, sys, ray
from ray._private import state
ray.init(address=sys.argv[1], log_to_driver=False)
acts = [a for a in state.actors().values() if "TrainWorker" in a["ActorClassName"]]
print(json.dumps(sorted(a["Address"]["IPAddress"] for a in acts)))
"""


def test_two_worker_training_spans_both_nodes(ray_two_nodes, s3):
    cluster = ray_two_nodes
    out = f"{s3}/runs"
    args = [f"resources.ray_address={cluster['address']}", "resources.num_workers=2", "resources.cpus_per_worker=1",
            f"run.output_dir={out}", *TINY]
    cmd = [sys.executable, str(ROOT / "jobs" / "train_diffusion.py")]
    for a in args:
        cmd += ["--set", a]
    r = subprocess.run(cmd, env=cluster["env"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    run_dir = r.stdout.strip().splitlines()[-1]
    assert run_dir.startswith(out), run_dir

    import fsspec

    fs = fsspec.filesystem("s3")
    summary = json.loads(fs.cat_file(f"{run_dir}/summary.json"))
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert summary["checkpoint"].startswith(out) and fs.exists(summary["checkpoint"])

    q = subprocess.run([sys.executable, "-c", WORKERS_BY_NODE, cluster["address"]], env=cluster["env"],
                       capture_output=True, text=True, timeout=120)
    assert q.returncode == 0, q.stderr[-3000:]
    ips = json.loads(q.stdout.strip().splitlines()[-1])
    assert sorted(set(ips)) == sorted(cluster["ips"]), ips      # one Train worker on each node
