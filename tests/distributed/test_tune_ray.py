"""A 2-trial Tune sweep (ASHA, Train V2 driver functions, TuneReportCallback), one MLflow run per trial under
the job's run, and a best-config YAML preset that loads as a normal config."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fakes import tiny_classifier_checkpoint

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_two_trial_tune_writes_a_loadable_preset(ray_local, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    import tune as tune_job
    from ltaug.cli import job_main
    from ltaug.config import load_config

    clf = tiny_classifier_checkpoint(str(tmp_path / "clf.pt"), num_classes=10)
    db = f"sqlite:///{tmp_path}/mlflow.db"
    sets = ["data.image_size=8", "model.ch=8", "model.ch_mult=[1,2]", "model.attn_resolutions=[]", "model.groups=4",
            "model.dropout=0.0", "train.batch_size=16", "train.warmup=0", "diffusion.timesteps=50",
            "sample.steps=3", "tune.train_steps=4", "tune.reports=2", "tune.num_per_class=4", "tune.search=grid",
            "tune.space={guidance.cfg.omega: [0.0, 1.0]}", "tune.num_samples=1", "tune.trial_cpus=0.5",
            "resources.num_workers=1", f"classifier.checkpoint={clf}", f"run.output_dir={tmp_path}/runs",
            f"tracking.uri={db}"]
    rc = job_main("tune", "test", tune_job.body, [a for s in sets for a in ("--set", s)])
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    run_dir = out.out.strip().splitlines()[-1]
    summary = json.loads(Path(run_dir, "summary.json").read_text())
    assert summary["num_trials"] == 2 and summary["errors"] == 0
    assert all(t["tail_fid"] is not None for t in summary["trials"])
    best = load_config(summary["preset"])
    assert best.guidance.cfg.omega == summary["best_overrides"]["guidance.cfg.omega"]
    client = MlflowClient(db)
    parent = summary["mlflow_run_id"]
    exp = client.get_run(parent).info.experiment_id
    children = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(children) == 2 and all("tail_fid" in r.data.metrics for r in children)
