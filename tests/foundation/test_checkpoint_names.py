"""One way to name a checkpoint (file, directory, run directory, ``-latest`` pointer, ``runs:/``), layered
configs (positional overrides, ignored-key warnings), failure tags and final-step metrics."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ltaug.cli import job_main
from ltaug.config import ConfigError, ignored_keys, load_config, load_config_sources
from ltaug.stages import train_diffusion
from ltaug.stages.checkpoints import resolve_checkpoints, resolve_one
from ltaug.stages.sample import sample_images
from ltaug.train.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "configs" / "quickstart.yaml")
TINY = ["model.preset=custom", "model.ch=8", "model.attn_resolutions=[]", "sample.steps=2", "train.steps=3",
        "train.log_every=1", "train.ckpt_every=0", "sample.num_per_class=1"]


def _job(name, body, out, *sets, capsys=None):
    argv = ["--config", QUICK, f"run.output_dir={out}", *TINY, *sets]
    rc = job_main(name, "", lambda cfg, run, launcher, args: body(cfg, run, launcher), argv)
    return rc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert _job("train_diffusion", train_diffusion, out) == 0
    pointer = json.loads((out / "train_diffusion-latest").read_text())
    summary = json.loads(Path(pointer["run_dir"], "summary.json").read_text())
    return out, pointer, summary


def test_latest_pointer_and_checkpoint_artifact(trained):
    out, pointer, summary = trained
    assert pointer["job"] == "train_diffusion" and pointer["mlflow_run_id"] == summary["mlflow_run_id"]
    from mlflow.tracking import MlflowClient

    from ltaug.track import default_uri

    c = MlflowClient(default_uri(str(out)))
    run = c.get_run(summary["mlflow_run_id"])
    assert [a.path for a in c.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/ckpt-000000003.pt"]
    if (ROOT / ".git").exists():
        assert len(run.data.tags.get("mlflow.source.git.commit", "")) == 40
    # final metrics land at the last training step, not at step 0
    assert max(m.step for m in c.get_metric_history(run.info.run_id, "loss")) == 3


@pytest.mark.parametrize("form", ["file", "dir", "run_dir", "latest", "latest_relative", "runs_uri"])
def test_every_form_resolves_to_one_absolute_checked_file(trained, form, monkeypatch):
    out, pointer, summary = trained
    ckpt = summary["checkpoint"]
    monkeypatch.chdir(out.parent)
    value = {"file": ckpt, "dir": os.path.dirname(ckpt), "run_dir": pointer["run_dir"],
             "latest": str(out / "train_diffusion-latest"),
             "latest_relative": os.path.join(out.name, "train_diffusion-latest"),
             "runs_uri": f"runs:/{summary['mlflow_run_id']}/checkpoints/ckpt-000000003.pt"}[form]
    cfg = resolve_checkpoints(load_config(QUICK, [f"run.output_dir={out}", f"model.checkpoint={value}"]))
    assert os.path.isabs(cfg.model.checkpoint) and cfg.model.checkpoint.endswith("ckpt-000000003.pt")
    if form == "runs_uri":
        assert "downloaded" in cfg.model.checkpoint
    else:
        assert cfg.model.checkpoint == ckpt


def test_wrong_kind_and_missing_name_the_key(trained, tmp_path):
    out, _, summary = trained
    cfg = load_config(QUICK, [f"run.output_dir={out}"])
    with pytest.raises(CheckpointError, match=r"^classifier\.checkpoint=.*'diffusion' checkpoint, not a classifier"):
        resolve_one(cfg, "classifier.checkpoint", summary["checkpoint"])
    with pytest.raises(CheckpointError, match=r"^model\.checkpoint=.*not found"):
        resolve_one(cfg, "model.checkpoint", str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match=r"^model\.checkpoint=runs:/0123abc/x\.pt: .*no MLflow run"):
        resolve_one(cfg, "model.checkpoint", "runs:/0123abc/x.pt")


def test_sample_job_takes_the_latest_pointer_and_keeps_the_given_name(trained, capsys):
    out, _, _ = trained
    given = f"model.checkpoint={out / 'train_diffusion-latest'}"
    assert _job("sample", sample_images, out, given) == 0
    run_dir = capsys.readouterr().out.strip().splitlines()[-1]
    s = json.loads(Path(run_dir, "summary.json").read_text())
    assert s["checkpoint"].endswith("ckpt-000000003.pt")
    from ltaug.stages import run_dir as named

    assert run_dir == named(load_config(QUICK, [f"run.output_dir={out}", *TINY, given]), "sample")
    assert json.loads((out / "sample-latest").read_text())["run_dir"] == run_dir


def test_a_wrong_checkpoint_fails_before_the_run_starts(trained, capsys):
    out, _, summary = trained
    rc = _job("sample", sample_images, out, f"classifier.checkpoint={summary['checkpoint']}")
    assert rc == 2 and "classifier.checkpoint=" in capsys.readouterr().err


def test_failed_run_gets_an_error_tag_and_traceback(tmp_path, capsys):
    def boom(cfg, run, launcher, args):
        raise ValueError("something the user can fix")

    rc = job_main("train_diffusion", "", boom, ["--config", QUICK, f"run.output_dir={tmp_path}"])
    assert rc == 2
    from mlflow.tracking import MlflowClient

    from ltaug.track import default_uri

    c = MlflowClient(default_uri(str(tmp_path)))
    (run,) = c.search_runs([c.get_experiment_by_name("ltaug").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["ltaug.error"] == "ValueError: something the user can fix"
    p = c.download_artifacts(run.info.run_id, "error/traceback.txt", str(tmp_path / "dl"))
    assert "raise ValueError" in Path(p).read_text()
    assert not (tmp_path / "train_diffusion-latest").exists()


def test_positional_overrides_and_ignored_key_warnings(tmp_path, capsys):
    argv = ["--config", QUICK, "--set", "seed=3", "classifier.steps=10", "classifier.epochs=2", "--dry-run"]
    assert job_main("train_classifier", "", lambda *a: {}, argv) == 0
    cap = capsys.readouterr()
    assert "epochs: 2.0" in cap.out and "# run directory:" in cap.out
    assert "warning: classifier.steps (from --set classifier.steps=10) is ignored: classifier.epochs=2.0 wins" in cap.err
    assert job_main("train_classifier", "", lambda *a: {}, ["--config", QUICK, "seed"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    cfg, src = load_config_sources(QUICK, ["sample.sampler=ddpm", "sample.eta=0.5", "train.steps=9",
                                           "pipeline.diffusion_steps=4"])
    warns = ignored_keys(cfg, src, "pipeline")
    assert any(w.startswith("sample.eta") and "sample.sampler=ddpm" in w for w in warns)
    assert any(w.startswith("train.steps") and "pipeline.diffusion_steps=4" in w for w in warns)
    assert not any(w.startswith("train.steps") for w in ignored_keys(cfg, src, "train_diffusion"))
    assert ignored_keys(load_config(QUICK, []), {}, "pipeline") == []    # only keys the user set
    with pytest.raises(ConfigError):
        load_config(QUICK, ["nope.key=1"])
