"""The end-to-end pipeline job: every stage, summary contract, MLflow runs nested under one parent,
resume on re-run, and skipping stages by pointing at existing outputs."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ACC = {"acc_all", "acc_many", "acc_medium", "acc_few", "per_class",
       "val_acc_all", "val_acc_many", "val_acc_medium", "val_acc_few"}
TINY = ["train.steps=30", "train.batch_size=16", "train.ckpt_every=0", "classifier.steps=30",
        "classifier.batch_size=32", "classifier.arch=resnet20", "sample.steps=4", "generate.target_per_class=30",
        "generate.minority_score=false", "guidance.minority.scale=0.1", "guidance.minority.every=2",
        "eval.kid_subsets=5"]


@pytest.fixture
def run_pipeline(capsys, monkeypatch):
    """The pipeline job in this process (one thread), counting how often the dataset source is decoded."""
    import torch

    from ltaug.data import sources

    sys.path.insert(0, str(ROOT / "jobs"))
    import pipeline as job

    decoded = []
    real = sources.SOURCES["digits"]
    monkeypatch.setitem(sources.SOURCES, "digits", lambda cfg, split: decoded.append(split) or real(cfg, split))
    n = torch.get_num_threads()
    torch.set_num_threads(1)

    def go(out: Path, *extra: str) -> tuple[Path, dict, str, list]:
        decoded.clear()
        sets = [a for s in (*TINY, f"run.output_dir={out}", *extra) for a in ("--set", s)]
        rc = job.job_main("pipeline", "", job.body, ["--config", str(ROOT / "configs" / "quickstart.yaml"), *sets])
        cap = capsys.readouterr()
        assert rc == 0, cap.err[-4000:]
        run_dir = Path(cap.out.strip().splitlines()[-1])
        return run_dir, json.loads((run_dir / "summary.json").read_text()), cap.out, list(decoded)

    yield go
    torch.set_num_threads(n)


@pytest.mark.slow
def test_pipeline_end_to_end(tmp_path, run_pipeline):
    run_dir, s, stdout, decoded = run_pipeline(tmp_path / "runs")
    assert sorted(decoded) == ["test", "train"]        # decoded once into the dataset artifact, then read from it
    assert ACC <= set(s["baseline"]) and ACC <= set(s["augmented"])
    assert set(s["classical"]) == {"resample", "balanced_softmax"}
    assert all(ACC <= set(v) for v in s["classical"].values())
    assert len(s["baseline"]["per_class"]) == 10
    assert s["val_counts"] == [20] * 10 and s["val_held_out"][0] > 0 and s["baseline"]["val_acc_all"] is not None
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
    run_dir2, s2, _, decoded2 = run_pipeline(tmp_path / "runs")
    assert decoded2 == []                                # the artifact of the first run is reused
    assert run_dir2 == run_dir
    assert s2["baseline"] == s["baseline"] and s2["augmented"] == s["augmented"]
    gen2 = json.loads((run_dir / "generate" / "summary.json").read_text())
    assert gen2["new_shards"] == 0 and gen2["skipped_shards"] > 0          # every shard was already published
    diff2 = json.loads((run_dir / "diffusion" / "summary.json").read_text())
    assert diff2["resumed_from"] == diff2["steps"] == 30                   # resumed from the final checkpoint
    for stage in ("baseline", "augmented"):
        st = json.loads((run_dir / stage / "summary.json").read_text())
        assert st["checkpoint"] == s["checkpoints"][stage]
    assert s2["dataset"] == s["dataset"]                                   # one dataset artifact, reused

    # stages skipped by pointing at existing outputs (a fresh output dir)
    ck = s["checkpoints"]
    _, s3, out3, _ = run_pipeline(tmp_path / "runs3", f"classifier.checkpoint={ck['baseline']}",
                               f"model.checkpoint={ck['diffusion']}", f"pipeline.shards={s['shards']}",
                               "pipeline.classical=[]")
    assert "using existing" in out3 and s3["classical"] == {}
    assert s3["baseline"]["acc_all"] == s["baseline"]["acc_all"]
    assert s3["generation"]["written"] == g["written"]
