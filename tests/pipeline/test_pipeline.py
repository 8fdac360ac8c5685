"""The end-to-end pipeline job: every stage, summary contract, MLflow runs nested under one parent,
resume on re-run, and skipping stages by pointing at existing outputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ACC = {"acc_all", "acc_many", "acc_medium", "acc_few", "per_class"}
TINY = ["train.steps=30", "train.batch_size=16", "train.ckpt_every=0", "classifier.steps=30",
        "classifier.batch_size=32", "classifier.arch=resnet20", "sample.steps=4", "generate.target_per_class=30",
        "generate.minority_score=false", "guidance.minority.scale=0.1", "guidance.minority.every=2",
        "eval.kid_subsets=5"]


def run_pipeline(out: Path, *extra: str) -> tuple[Path, dict, str]:
    sets = [a for s in (*TINY, f"run.output_dir={out}", *extra) for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "jobs/pipeline.py", "--config", "configs/quickstart.yaml", *sets],
                       capture_output=True, text=True, cwd=ROOT, timeout=1500, env=env)
    assert p.returncode == 0, p.stderr[-4000:]
    run_dir = Path(p.stdout.strip().splitlines()[-1])
    return run_dir, json.loads((run_dir / "summary.json").read_text()), p.stdout


@pytest.mark.slow
def test_pipeline_end_to_end(tmp_path):
    run_dir, s, stdout = run_pipeline(tmp_path / "runs")
    assert ACC <= set(s["baseline"]) and ACC <= set(s["augmented"])
    assert set(s["classical"]) == {"resample", "balanced_softmax"}
    assert all(ACC <= set(v) for v in s["classical"].values())
    assert len(s["baseline"]["per_class"]) == 10
    g = s["generation"]
    assert g["requested"] == 4 + 10 + 14 + 18  # digits r=10: classes 6..9 have 26, 20, 16, 12 < 30
    assert g["id"] + g["aid"] + g["ood"] == g["requested"] and g["written"] == g["id"] + g["aid"]
    assert (run_dir / "report.md").exists() and "| augmented" in (run_dir / "report.md").read_text()
    for png in ("class_histogram", "per_class_accuracy", "samples_synthetic", "id_aid_ood"):
        assert (run_dir / "plots" / f"{png}.png").stat().st_size > 1000, png
    assert "top-1 on the balanced test set" in stdout

    # one MLflow run per stage, nested under the pipeline's run
    from mlflow.tracking import MlflowClient

    ids = s["mlflow_run_ids"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    for stage in ("baseline", "classical-resample", "classical-balanced_softmax", "diffusion", "generate", "augmented"):
        r = client.get_run(ids[stage])
        assert r.data.tags["mlflow.parentRunId"] == ids["pipeline"], stage
        assert r.info.status == "FINISHED", stage
    assert "acc_few" in client.get_run(ids["augmented"]).data.metrics

    # the same config again resumes: nothing retrained or regenerated, identical results
    run_dir2, s2, _ = run_pipeline(tmp_path / "runs")
    assert run_dir2 == run_dir
    assert s2["baseline"] == s["baseline"] and s2["augmented"] == s["augmented"]
    assert s2["seconds"]["generate"] < s["seconds"]["generate"] + 5

    # stages skipped by pointing at existing outputs (a fresh output dir)
    ck = s["checkpoints"]
    _, s3, out3 = run_pipeline(tmp_path / "runs3", f"classifier.checkpoint={ck['baseline']}",
                               f"model.checkpoint={ck['diffusion']}", f"pipeline.shards={s['shards']}",
                               "pipeline.classical=[]")
    assert "using existing" in out3 and s3["classical"] == {}
    assert s3["baseline"]["acc_all"] == s["baseline"]["acc_all"]
    assert s3["generation"]["written"] == g["written"]
