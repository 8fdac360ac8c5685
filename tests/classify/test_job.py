"""jobs/train_classifier.py end to end (tiny settings): summary keys, artifacts, synthetic shards + filter."""
from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["classifier.arch=resnet20", "classifier.width=4", "classifier.steps=3", "classifier.batch_size=16",
        "data.image_size=8", "tracking.uri=none"]


def _job():
    spec = importlib.util.spec_from_file_location("train_classifier_job", ROOT / "jobs" / "train_classifier.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(capsys, tmp_path, *sets: str) -> dict:
    argv = [a for s in (*TINY, f"run.output_dir={tmp_path / 'runs'}", *sets) for a in ("--set", s)]
    assert _job().main(argv) == 0
    run_dir = capsys.readouterr().out.strip().splitlines()[-1]
    return json.loads((Path(run_dir) / "summary.json").read_text())


def test_help_and_dry_run(capsys):
    with pytest.raises(SystemExit) as e:
        _job().main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "classifier.synthetic_uri" in out and "balanced_softmax" in out
    assert _job().main(["--dry-run", "--set", "classifier.method=drw"]) == 0
    assert "method: drw" in capsys.readouterr().out
    assert _job().main(["--set", "classifier.method=nope"]) == 2


def test_job_trains_evaluates_and_mixes_filtered_synthetic_shards(tmp_path, capsys):
    base = _run(capsys, tmp_path, "run.name=base")
    for k in ("checkpoint", "acc_all", "acc_many", "acc_medium", "acc_few", "per_class"):
        assert k in base
    # the validation figures beside the test figures; the split and what it held out of train, reported
    for k in ("val_acc_all", "val_acc_many", "val_acc_medium", "val_acc_few"):
        assert isinstance(base[k], float) and 0.0 <= base[k] <= 1.0, k
    assert base["val_counts"] == [20] * 10 and base["val_held_out"][0] > 0 and base["sync_batchnorm"] is False
    run_dir = Path(base["run_dir"])
    assert len(base["per_class"]) == 10 and Path(base["checkpoint"]).exists()
    for name in ("confusion.json", "confusion.png", "class_histogram.png", "per_class_accuracy.png", "samples_real.png"):
        assert (run_dir / name).exists(), name

    webdataset = pytest.importorskip("webdataset")
    from PIL import Image

    shards = tmp_path / "shards"
    shards.mkdir()
    rng = np.random.RandomState(0)
    with webdataset.TarWriter(str(shards / "shard-000000.tar")) as w:
        for i in range(20):
            buf = io.BytesIO()
            Image.fromarray(rng.randint(0, 255, (8, 8), dtype=np.uint8)).save(buf, format="PNG")
            w.write({"__key__": f"s{i:04d}", "png": buf.getvalue(), "cls": str(9 - i % 3).encode(), "json": b"{}"})
    aug = _run(capsys, tmp_path, "run.name=aug", f"classifier.synthetic_uri={shards}",
               f"classifier.checkpoint={base['checkpoint']}", "filter.apply=true", "filter.keep=[id,aid,ood]")
    assert aug["synthetic_read"] == 20 and aug["num_synthetic"] == 20
    assert set(aug["synthetic_shares"]) == {"id", "aid", "ood"} and "baseline_acc_all" in aug
    assert (Path(aug["run_dir"]) / "id_aid_ood.png").exists()
    assert (Path(aug["run_dir"]) / "samples_synthetic.png").exists()
    assert aug["generative"]["fid"] > 0 and (Path(aug["run_dir"]) / "generative.json").exists()
