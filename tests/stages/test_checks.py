"""A given checkpoint that does not fit the run's data is one error naming the key, before any work starts."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "generate"))
from fakes import tiny_classifier_checkpoint, tiny_diffusion_checkpoint  # noqa: E402

from ltaug.config import load_config  # noqa: E402
from ltaug.stages import LocalLauncher, open_run  # noqa: E402


def _cfg(tmp_path, *sets):
    return load_config(None, [f"run.output_dir={tmp_path}/runs", "tracking.uri=none", "data.image_size=8",
                              "data.channels=1", *sets])


def test_evaluate_refuses_a_classifier_trained_at_another_size(tmp_path):
    from ltaug.stages import evaluate

    clf = tiny_classifier_checkpoint(str(tmp_path / "clf16.pt"), num_classes=10, image_size=16)
    cfg = _cfg(tmp_path, f"classifier.checkpoint={clf}")
    with pytest.raises(ValueError, match=r"classifier.checkpoint=.*clf16.pt \(16x16x1, 10 classes\) does not fit "
                                         r"this run's data \(8x8x1, 10 classes\): image size 16 vs 8"):
        evaluate(cfg, open_run(cfg, "evaluate", tracked=False))


def test_train_diffusion_checks_the_aid_classifier_before_any_step(tmp_path):
    from ltaug.stages import train_diffusion

    clf = tiny_classifier_checkpoint(str(tmp_path / "clf4.pt"), num_classes=4, image_size=8)
    cfg = _cfg(tmp_path, f"classifier.checkpoint={clf}", "loss.aid=0.1", "train.steps=2")
    run = open_run(cfg, "train_diffusion", tracked=False)
    with pytest.raises(ValueError, match=r"classes 4 vs 10"):
        train_diffusion(cfg, run, LocalLauncher(cfg.resources))
    assert not Path(run.path("checkpoints")).exists()          # nothing was trained


def test_pipeline_checks_a_given_diffusion_model_first(tmp_path):
    from ltaug.stages import pipeline

    diff = tiny_diffusion_checkpoint(str(tmp_path / "d3.pt"), counts=(20, 10, 5), image_size=8)
    cfg = _cfg(tmp_path, f"model.checkpoint={diff}")
    run = open_run(cfg, "pipeline", tracked=False)
    with pytest.raises(ValueError, match=r"model.checkpoint=.*d3.pt .*classes 3 vs 10"):
        pipeline(cfg, run, LocalLauncher(cfg.resources))
    assert not Path(run.path("baseline")).exists()             # no stage ran
