"""Tune without Ray: resources.num_workers=0 runs the trials one after another through the same stage; the
preset is a normal config; each trial is a child MLflow run of the job's run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_local_sweep_writes_a_loadable_preset_and_child_runs(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    sys.path.insert(0, str(ROOT / "jobs"))
    import tune as tune_job

    from ltaug.config import load_config

    db = f"sqlite:///{tmp_path}/mlflow.db"
    sets = ["data.image_size=8", "model.ch=8", "model.ch_mult=[1,2]", "model.attn_resolutions=[]", "model.groups=4",
            "model.dropout=0.0", "train.batch_size=16", "train.warmup=0", "diffusion.timesteps=50",
            "sample.steps=3", "tune.train_steps=4", "tune.reports=2", "tune.num_per_class=4", "tune.search=grid",
            "tune.space={guidance.cfg.omega: [0.0, 1.0], guidance.cfg.stop: {uniform: [0.5, 1.0]}}", "tune.num_samples=1", "resources.num_workers=0",
            f"run.output_dir={tmp_path}/runs", f"tracking.uri={db}"]
    rc = tune_job.job_main("tune", "test", tune_job.body, [a for s in sets for a in ("--set", s)])
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    summary = json.loads(Path(out.out.strip().splitlines()[-1], "summary.json").read_text())
    assert summary["num_trials"] == 2 and summary["errors"] == 0 and summary["restored"] is False
    assert [t["overrides"]["guidance.cfg.omega"] for t in summary["trials"]] == [0.0, 1.0]
    assert all(0.5 <= t["overrides"]["guidance.cfg.stop"] <= 1.0 for t in summary["trials"])
    assert [t["trial_id"] for t in summary["trials"]] == ["0000", "0001"]
    assert all(t["iterations"] == 2 and t["val_tail_fid"] > 0 and t["step"] == 4 for t in summary["trials"])
    best = min(summary["trials"], key=lambda t: t["val_tail_fid"])
    assert summary["best_overrides"] == best["overrides"]
    preset = load_config(summary["preset"])
    assert preset.guidance.cfg.omega == best["overrides"]["guidance.cfg.omega"]
    client = MlflowClient(db)
    parent = summary["mlflow_run_id"]
    exp = client.get_run(parent).info.experiment_id
    children = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(children) == 2 and all("val_tail_fid" in r.data.metrics for r in children)
