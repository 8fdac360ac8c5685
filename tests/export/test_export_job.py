"""jobs/export.py end to end: a tiny classifier (named by runs:/) and a tiny diffusion model (by -latest)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("safetensors")

from ltaug.cli import job_main  # noqa: E402
from ltaug.classify import load_classifier  # noqa: E402
from ltaug.classify.export import load_exported_classifier  # noqa: E402
from ltaug.stages import train_classifier, train_diffusion  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
QUICK = str(ROOT / "configs" / "quickstart.yaml")
TINY = ["model.preset=custom", "model.ch=8", "model.attn_resolutions=[]", "train.steps=2", "train.ckpt_every=0",
        "classifier.steps=3", "classifier.epochs=0", "sample.steps=2"]


def _stage(job, fn, out, *sets):
    return job_main(job, "", lambda cfg, run, launcher, args: fn(cfg, run, launcher),
                    ["--config", QUICK, f"run.output_dir={out}", *TINY, *sets])


def test_export_job_writes_diffusers_and_classifier(tmp_path, capsys):
    from jobs.export import main

    assert _stage("train_classifier", train_classifier, tmp_path) == 0
    printed = capsys.readouterr().out
    assert "top-1 %" in printed and "val" in printed          # the accuracy table
    clf = json.loads((tmp_path / "train_classifier-latest").read_text())
    ckpt = json.loads(Path(clf["run_dir"], "summary.json").read_text())["checkpoint"]
    runs_uri = f"runs:/{clf['mlflow_run_id']}/checkpoints/{Path(ckpt).name}"
    assert _stage("train_diffusion", train_diffusion, tmp_path) == 0
    capsys.readouterr()
    rc = main(["--config", QUICK, f"run.output_dir={tmp_path}", *TINY, f"classifier.checkpoint={runs_uri}",
               f"model.checkpoint={tmp_path / 'train_diffusion-latest'}"])
    assert rc == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    s = json.loads((run_dir / "summary.json").read_text())
    assert Path(s["diffusers"], "unet", "diffusion_pytorch_model.safetensors").exists()
    assert Path(s["diffusers"], "scheduler", "scheduler_config.json").exists()
    model, bank = load_exported_classifier(s["classifier"])
    ref, ref_bank = load_classifier(ckpt)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-5)
    assert bank is not None and torch.allclose(bank.centers, ref_bank.centers)
    diffusers = pytest.importorskip("diffusers")
    unet = diffusers.UNet2DModel.from_pretrained(s["diffusers"], subfolder="unet")
    assert unet.config.num_class_embeds == 11
