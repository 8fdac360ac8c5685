"""jobs/train_diffusion.py and jobs/sample.py end to end on the embedded digits (tiny settings)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_job(name, *sets, out):
    cmd = [sys.executable, str(ROOT / "jobs" / f"{name}.py"), "--config", str(ROOT / "configs" / "quickstart.yaml"),
           "--set", f"run.output_dir={out}"] + [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = p.stdout.strip().splitlines()[-1]
    return run_dir, json.load(open(os.path.join(run_dir, "summary.json")))


def test_dry_run_and_bad_key():
    cmd = [sys.executable, str(ROOT / "jobs" / "sample.py"), "--config", str(ROOT / "configs" / "quickstart.yaml")]
    p = subprocess.run(cmd + ["--dry-run", "--set", "sample.steps=7"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "steps: 7" in p.stdout
    p = subprocess.run(cmd + ["--set", "sample.sampler=euler"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "sample.sampler" in p.stderr


@pytest.mark.slow
def test_train_then_sample(tmp_path):
    small = ["model.preset=custom", "model.ch=8", "model.attn_resolutions=[]", "sample.steps=3"]
    _, s = run_job("train_diffusion", "train.steps=4", "train.log_every=2", *small, out=tmp_path)
    assert s["checkpoint"].endswith("ckpt-000000004.pt") and s["grids"]
    run_dir, s2 = run_job("sample", f"model.checkpoint={s['checkpoint']}", "sample.num_per_class=2",
                          "sample.steps=3", "guidance.minority.scale=0.5", "guidance.minority.every=1",
                          "guidance.cfg.omega=1.0", out=tmp_path)
    z = np.load(os.path.join(run_dir, "samples.npz"))
    assert z["images"].dtype == np.uint8 and z["images"].shape == (20, 16, 16, 1)
    assert list(z["labels"]) == [c for c in range(10) for _ in range(2)] and len(set(z["seeds"])) == 20
    assert os.path.exists(os.path.join(run_dir, "samples_grid.png")) and s2["num_images"] == 20
