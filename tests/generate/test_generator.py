"""ImageGenerator (cfg, checkpoint, device): batch-split invariance, pickling, and generation_settings
(what determines the images: never a path or a device)."""
from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from ltaug.config import load_config, with_values
from ltaug.generate import FilterSpec, FilterStage, GenerationPlan, ImageGenerator, generation_settings

sys.path.insert(0, str(Path(__file__).parent))
from fakes import tiny_classifier_checkpoint, tiny_diffusion_checkpoint  # noqa: E402

GUIDED = ["sample.steps=3", "guidance.cfg.omega=1.0", "guidance.minority.scale=0.5", "guidance.minority.every=1",
          "generate.score_iters=1"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return (tiny_diffusion_checkpoint(str(d / "diff.pt")),
            tiny_classifier_checkpoint(str(d / "clf.pt"), radius_scale=0.6))


def test_image_k_is_the_same_whatever_the_batch_split(ckpts):
    gen = ImageGenerator(load_config(None, GUIDED), ckpts[0], "cpu")
    assert [type(g).__name__ for g in gen.guidances] == ["ClassifierFree", "MinorityGuidance"]
    plan = GenerationPlan((0, 3, 9, 5), seed=7, shard_size=8)
    rows = plan.rows(np.arange(plan.total))
    whole = gen(rows)
    parts = [gen(plan.rows(np.arange(a, min(a + 3, plan.total)))) for a in range(0, plan.total, 3)]
    np.testing.assert_array_equal(whole["image"], np.concatenate([p["image"] for p in parts]))
    np.testing.assert_allclose(whole["minority_score"], np.concatenate([p["minority_score"] for p in parts]), rtol=1e-5)
    assert whole["image"].dtype == np.uint8 and whole["image"].shape == (plan.total, 8, 8, 1)
    assert len(np.unique(whole["image"].reshape(plan.total, -1), axis=0)) == plan.total   # distinct seeds and images
    flt = FilterStage(FilterSpec(ckpts[1], ("id", "aid"), "cpu", 256))(whole)
    assert set(flt["category"]) <= {"id", "aid", "ood"}
    assert all((r == "") == k for r, k in zip(flt["reason"], flt["keep"]))
    empty = gen(plan.rows(np.arange(0)))
    assert empty["image"].shape == (0, 8, 8, 1) and empty["minority_score"].shape == (0,)


def test_pickles_as_its_constructor_arguments_and_rebuilds(ckpts):
    cfg = load_config(None, GUIDED + ["generate.minority_score=false"])
    gen = ImageGenerator(cfg, ckpts[0], "cpu", checkpoint_digest="d1")
    blob = pickle.dumps(gen)
    assert len(blob) < 20_000                        # no weights travel: only cfg, checkpoint, device, digest
    copy = pickle.loads(blob)
    rows = GenerationPlan((2, 2, 2, 2), seed=1, shard_size=8).rows(np.arange(8))
    a, b = gen(rows), copy(rows)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert "minority_score" not in a and copy.settings() == gen.settings()


def test_classifier_distance_needs_a_classifier(ckpts):
    cfg = load_config(None, GUIDED + ["guidance.minority.distance=classifier"])
    with pytest.raises(ValueError, match="classifier.checkpoint"):
        ImageGenerator(cfg, ckpts[0], "cpu")
    gen = ImageGenerator(with_values(cfg, {"classifier.checkpoint": ckpts[1]}), ckpts[0], "cpu")
    out = gen(GenerationPlan((0, 2, 0, 1), seed=3, shard_size=4).rows(np.arange(3)))
    assert out["image"].shape == (3, 8, 8, 1)


def test_generation_settings_name_what_determines_the_images():
    cfg = load_config(None, GUIDED + ["model.checkpoint=/some/where/ckpt.pt", "resources.use_gpu=false",
                                      "guidance.minority.distance=lpips",
                                      "guidance.minority.lpips_weights=/local/lpips.pt"])
    s = generation_settings(cfg, "abc123")
    assert s["checkpoint_digest"] == "abc123" and s["use_ema"] is True
    assert s["sampler"] == {"sampler": "ddim", "steps": 3, "eta": 0.0, "variance": "fixedlarge", "clip_denoised": False}
    assert s["guidance"]["cfg"] == {"omega": 1.0, "start": 0.0, "stop": 1.0, "every": 1}
    assert s["guidance"]["minority"]["scale"] == 0.5 and s["guidance"]["minority"]["distance"] == "lpips"
    assert s["minority_score"] is True and s["score_iters"] == 1
    text = json.dumps(s)                             # json-ready, and no path or device in it
    assert "/some/where" not in text and "lpips.pt" not in text and "cpu" not in text and "use_gpu" not in text
    # a switched-off guidance is recorded as its scale only: keys that cannot change an image cannot change the digest
    off = load_config(None, ["guidance.cfg.every=4"])
    assert generation_settings(off, "x")["guidance"] == {"cfg": {"omega": 0.0}, "minority": {"scale": 0.0}}
    assert generation_settings(off, "x") == generation_settings(load_config(None, []), "x")
    # what changes an image changes the settings
    for key, value in (("sample.steps", 4), ("sample.sampler", "ddpm"), ("guidance.cfg.every", 2),
                       ("guidance.minority.perturb", 0.5), ("sample.use_ema", False), ("generate.score_iters", 3),
                       ("sample.compile", "default")):   # compiled kernels round differently: not mixed in one run
        assert generation_settings(with_values(cfg, {key: value}), "abc123") != s, key
    # what does not, does not
    for key, value in (("model.checkpoint", "/elsewhere.pt"), ("resources.use_gpu", True),
                       ("guidance.minority.lpips_weights", "/other.pt"), ("sample.batch_size", 7)):
        assert generation_settings(with_values(cfg, {key: value}), "abc123") == s, key
