"""The training jobs themselves switch to Ray Train when resources.num_workers >= 1: the same stage, the same
summary keys and the same checkpoint naming as the in-process launcher."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray]


def _summary(capsys) -> dict:
    run_dir = capsys.readouterr().out.strip().splitlines()[-1]
    return json.loads((Path(run_dir) / "summary.json").read_text())


@pytest.mark.slow
def test_train_classifier_and_diffusion_jobs_on_ray(ray_local, tmp_path, capsys):
    import train_classifier
    import train_diffusion

    common = ["--set", f"run.output_dir={tmp_path}/runs", "--set", "tracking.uri=none", "--set", "data.image_size=8",
              "--set", "resources.num_workers=1", "--set", "resources.cpus_per_worker=0.5"]
    rc = train_classifier.job_main("train_classifier", "", train_classifier.body,
                                   argv=[*common, "--set", "classifier.steps=4", "--set", "classifier.arch=resnet20"])
    assert rc == 0
    s = _summary(capsys)
    assert s["world_size"] == 1 and s["steps"] == 4 and s["checkpoint"].endswith("ckpt-000000004.pt")
    assert {"acc_all", "acc_many", "acc_medium", "acc_few", "per_class"} <= set(s)
    local = [a.replace("resources.num_workers=1", "resources.num_workers=0") for a in common]
    rc = train_classifier.job_main("train_classifier", "", train_classifier.body,
                                   argv=[*local, "--set", "classifier.steps=4", "--set", "classifier.arch=resnet20",
                                         "--set", f"run.output_dir={tmp_path}/local"])
    assert rc == 0
    s0 = _summary(capsys)
    assert set(s0) == set(s) and s0["world_size"] == 1 and s0["steps"] == 4
    rc = train_diffusion.job_main("train_diffusion", "", train_diffusion.body,
                                  argv=[*common, "--set", "train.steps=3", "--set", "model.ch=8", "--set", "model.ch_mult=[1,2]",
                                        "--set", "model.attn_resolutions=[]", "--set", "model.groups=4", "--set", "train.batch_size=8"])
    assert rc == 0
    s = _summary(capsys)
    assert s["world_size"] == 1 and s["steps"] == 3 and Path(s["checkpoint"]).exists()
