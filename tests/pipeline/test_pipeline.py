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
# classifier.epochs=0: the quickstart trains by epochs (20), which would override classifier.steps
TINY = ["train.steps=30", "train.batch_size=16", "train.ckpt_every=0", "model.ch=8", "classifier.epochs=0", "classifier.steps=30",
        "classifier.batch_size=32", "classifier.arch=resnet20", "sample.steps=4", "generate.target_per_class=30",
        "generate.minority_score=false", "guidance.minority.scale=0.1", "guidance.minority.every=2",
        "eval.kid_subsets=5", "eval.num_per_class=5", "eval.evalnet_steps=20", "eval.cas_steps=10"]


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
    # decoded once into the dataset artifact (and once into the evalnet's full-train artifact), then read from them
    assert sorted(decoded) == ["test", "test", "train", "train"]
    assert ACC <= set(s["baseline"]) and ACC <= set(s["augmented"])
    assert set(s["classical"]) == {"resample", "balanced_softmax"}
    assert all(ACC <= set(v) for v in s["classical"].values())
    assert len(s["baseline"]["per_class"]) == 10
    assert s["val_counts"] == [20] * 10 and s["val_held_out"][0] > 0 and s["baseline"]["val_acc_all"] is not None
    g = s["generation"]
    assert g["requested"] == 4 + 10 + 14 + 18  # digits r=10: classes 6..9 have 26, 20, 16, 12 < 30
    assert g["id"] + g["aid"] + g["ood"] == g["requested"] and g["written"] == g["id"] + g["aid"]
    assert (run_dir / "report.md").exists() and "| augmented" in (run_dir / "report.md").read_text()
    assert "Generative protocol of the diffusion model" in (run_dir / "report.md").read_text()
    assert (run_dir / "evaluation.json").exists() and s["generative"]["cas_acc"] is not None
    for png in ("class_histogram", "per_class_accuracy", "samples_synthetic", "id_aid_ood"):
        assert (run_dir / "plots" / f"{png}.png").stat().st_size > 1000, png
    assert "top-1 on the balanced test set" in stdout
    # a single seed (pipeline.seeds empty): the old keys, std None, one per-seed row, a paired block
    assert s["seeds"] == [0] and s["baseline"]["acc_all_std"] is None and len(s["augmented"]["seeds"]) == 1
    assert s["augmented"]["seeds"][0]["acc_few"] == s["augmented"]["acc_few"]
    assert s["paired"]["against"] in s["classical"] and s["paired"]["selected_on"] == "val_acc_few"

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
    same = lambda e: {**e, "seeds": [{k: v for k, v in r.items() if k != "mlflow_run_id"} for r in e["seeds"]]}  # noqa: E731
    assert same(s2["baseline"]) == same(s["baseline"]) and same(s2["augmented"]) == same(s["augmented"])
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

    # several seeds on the same diffusion model and shards: every classifier stage per seed, mean / std / rows
    import numpy as np

    run_dir4, s4, out4, _ = run_pipeline(tmp_path / "runs4", f"model.checkpoint={ck['diffusion']}", f"pipeline.shards={s['shards']}",
                                  "pipeline.classical=[resample, balanced_softmax]", "pipeline.seeds=[0, 1]",
                                  "classifier.epochs=0", "classifier.steps=4")
    assert s4["seeds"] == [0, 1] and "mean ± sample std over 2 seeds" in out4
    methods = {"baseline": s4["baseline"], "augmented": s4["augmented"], **s4["classical"]}
    for name, m in methods.items():
        assert [r["seed"] for r in m["seeds"]] == [0, 1], name
        for k in ACC - {"per_class"}:
            vals = [r[k] for r in m["seeds"]]
            assert m[k] == pytest.approx(np.mean(vals)) and m[f"{k}_std"] == pytest.approx(np.std(vals, ddof=1)), (name, k)
        assert len({r["checkpoint"] for r in m["seeds"]}) == 2, name            # one classifier trained per seed
    assert {"baseline-s0", "baseline-s1", "augmented-s1", "classical-resample-s0"} <= set(s4["mlflow_run_ids"])
    p = s4["paired"]
    best = max(s4["classical"], key=lambda m: (s4["classical"][m]["val_acc_few"], s4["classical"][m]["val_acc_all"]))
    assert p["against"] == best and [r["seed"] for r in p["rows"]] == [0, 1]
    for k in ("acc_all", "acc_many", "acc_medium", "acc_few"):
        d = [a[k] - b[k] for a, b in zip(s4["augmented"]["seeds"], s4["classical"][best]["seeds"])]
        assert [r[k] for r in p["rows"]] == pytest.approx(d) and p[k] == pytest.approx(np.mean(d)), k
    report = (run_dir4 / "report.md").read_text()
    assert "Paired difference: augmented − " + best in report and "±" in report

    # the quality gate before generation (pipeline.gate_scales): generation uses the scale the gate chose on
    # validation, the gate's rows and plot are in the summary and the gate's child run
    run_dir5, s5, out5, _ = run_pipeline(tmp_path / "runs5", f"classifier.checkpoint={ck['baseline']}",
                                         f"model.checkpoint={ck['diffusion']}", "pipeline.classical=[]",
                                         "pipeline.gate_scales=[0.1, 50.0]")
    gate = s5["minority_gate"]
    assert [r["scale"] for r in gate["rows"]] == [0.0, 0.1, 50.0]
    chosen = gate["chosen_scale"]
    assert chosen in (0.0, 0.1, 50.0) and f"-> {chosen:g}" in out5
    assert max([r["scale"] for r in gate["rows"] if r["passes"]] or [0.0]) == chosen
    assert "Quality gate of minority guidance" in (run_dir5 / "report.md").read_text()
    assert (run_dir5 / "gate" / "minority_gate.json").exists() and (run_dir5 / "gate" / "minority_gate.png").stat().st_size > 1000
    manifest = json.loads((run_dir5 / "generate" / "manifest.json").read_text())
    assert manifest["settings"]["generator"]["guidance"]["minority"]["scale"] == chosen
