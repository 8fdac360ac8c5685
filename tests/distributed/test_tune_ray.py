"""A 2-trial Tune sweep (ASHA on the training step, Train V2 driver functions, TuneReportCallback) whose driver
is killed (SIGKILL) mid-sweep and re-run on the same run dir: ``Tuner.restore`` resumes it with the same trial
ids, the interrupted trial resumes from its own checkpoint, one MLflow run per trial under the job's run, and a
best-config YAML preset that loads as a normal config."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fakes import tiny_classifier_checkpoint

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_an_interrupted_tune_sweep_is_restored_with_its_trials(ray_local, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    import tune as tune_job
    from ltaug.cli import job_main
    from ltaug.config import load_config

    clf = tiny_classifier_checkpoint(str(tmp_path / "clf.pt"), num_classes=10)
    db = f"sqlite:///{tmp_path}/mlflow.db"
    sets = ["data.image_size=8", "model.ch=8", "model.ch_mult=[1,2]", "model.attn_resolutions=[]", "model.groups=4",
            "model.dropout=0.0", "train.batch_size=16", "train.warmup=0", "diffusion.timesteps=50",
            "sample.steps=3", "tune.train_steps=4", "tune.reports=2", "tune.num_per_class=4", "tune.search=grid",
            "tune.space={guidance.cfg.omega: [0.0, 1.0], guidance.cfg.stop: {uniform: [0.5, 1.0]}}",
            "tune.num_samples=1", "tune.trial_cpus=0.5", "tune.max_concurrent=2", "resources.num_workers=1",
            f"classifier.checkpoint={clf}",
            f"run.output_dir={tmp_path}/runs", f"tracking.uri={db}"]
    argv = [a for s in sets for a in ("--set", s)]
    # the first run: a driver process on the session's Ray, killed once a trial has written its first checkpoint
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    log = open(tmp_path / "driver.log", "wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "tune.py"), *argv], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=ROOT)
    ckpts: list[str] = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            ckpts = glob.glob(f"{tmp_path}/runs/*/tune/checkpoints/trial-*/ckpt-*.pt")
            if ckpts and glob.glob(f"{tmp_path}/runs/*/tune/tuner/*/experiment_state*.json"):
                break
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
        log.close()
    assert ckpts, (tmp_path / "driver.log").read_text()[-3000:]
    before = {Path(c).parent.name.removeprefix("trial-") for c in ckpts}

    rc = job_main("tune", "test", tune_job.body, argv)   # the same run dir: restored
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    summary = json.loads(Path(out.out.strip().splitlines()[-1], "summary.json").read_text())
    assert summary["restored"] is True and summary["num_trials"] == 2 and summary["errors"] == 0
    trials = summary["trials"]
    assert before <= {t["trial_id"] for t in trials} and len({t["trial_id"] for t in trials}) == 2
    assert any(t["resumed_from"] and t["resumed_from"] >= 2 for t in trials), trials   # from its own checkpoint
    assert all(t["val_tail_fid"] is not None and t["step"] in (2.0, 4.0) for t in trials)
    assert {t["overrides"]["guidance.cfg.omega"] for t in trials} == {0.0, 1.0}
    best = load_config(summary["preset"])
    assert best.guidance.cfg.omega == summary["best_overrides"]["guidance.cfg.omega"]
    client = MlflowClient(db)
    parent = summary["mlflow_run_id"]
    exp = client.get_run(parent).info.experiment_id
    children = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'")
    names = {r.info.run_name for r in children if "val_tail_fid" in r.data.metrics}
    assert {f"trial-{t['trial_id']}" for t in trials} <= names
