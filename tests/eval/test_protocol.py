"""The generative protocol (ltaug.eval.protocol): every field, near copies, class consistency, the per-class
reference top-up from validation; the evalnet cache; the strict Inception load; the evaluate job end to end."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ltaug.classify import ModelSpec, build_classifier
from ltaug.config import ClassifierConfig, EvalConfig
from ltaug.data import ImageSet
from ltaug.eval import ClassifierFeatures, generative_protocol, inception_input, load_inception
from ltaug.eval.protocol import PER_CLASS_KEYS, SCALAR_KEYS, class_consistency, near_copies, reference_set

ROOT = Path(__file__).resolve().parents[2]
K, S = 3, 8
GROUPS = {"many": [0], "medium": [1], "few": [2]}
CAS = ClassifierConfig(arch="resnet20", width=4, steps=2, batch_size=8, augment="none", log_every=1)


def _set(counts, seed, noise=12):
    """Class c = a fixed random pattern of its own + pixel noise (uint8 [N,8,8,1])."""
    rng = np.random.RandomState(seed)
    pat = np.random.RandomState(99).randint(30, 220, (K, S, S, 1))
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.int64)
    im = np.clip(pat[labels] + rng.randint(-noise, noise + 1, (len(labels), S, S, 1)), 0, 255).astype(np.uint8)
    return ImageSet(im, labels, K, source=f"set{seed}")


@pytest.fixture(scope="module")
def sets():
    return _set([12, 6, 3], 0), _set([5, 5, 5], 1), _set([6, 6, 6], 2)   # train (long-tailed), val, test


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_classifier(ModelSpec("resnet20", K, 1, S, width=4)).eval()


class ByBrightness(nn.Module):
    """Predicts class 0 / 1 / 2 for a mean pixel (in [-1,1]) below -0.3 / below 0.3 / above."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        m = x.mean((1, 2, 3))
        return torch.nn.functional.one_hot((m > -0.3).long() + (m > 0.3).long(), K).float() + 0 * self.w


def test_every_field_present_and_finite(sets, net):
    train, val, test = sets
    samples = _set([4, 4, 4], 3)
    rep = generative_protocol(train, val, test, samples, GROUPS, ClassifierFeatures(net), net, cas_cfg=CAS,
                              min_real_per_class=5, k=3, kid_subsets=3, kid_subset_size=10)
    for key in SCALAR_KEYS:
        assert isinstance(rep[key], float) and math.isfinite(rep[key]), key
    assert len(rep["per_class"]) == K
    for e in rep["per_class"]:
        assert all(isinstance(e[k], float) and math.isfinite(e[k]) for k in PER_CLASS_KEYS), e
    assert len(rep["near_copy_rate_per_class"]) == K and rep["num_fake"] == 12
    assert rep["num_real_pooled"] == 3 * 5          # class-balanced: the smallest reference (5) from each class
    assert 0.0 <= rep["cas_acc"] <= 1.0


def test_reference_topped_up_from_validation_only_where_short(sets):
    train, val, _ = sets
    images, labels, info = reference_set(train, val, min_real=5)
    assert info["reference_counts"] == [12, 6, 5] and info["reference_from_val"] == [0, 0, 2]
    assert np.bincount(labels).tolist() == [12, 6, 5]
    few = images[labels == 2]
    assert (few[:3] == train.images[train.labels == 2]).all() and (few[3:] == val.images[val.labels == 2][:2]).all()
    assert reference_set(train, val, min_real=20)[2]["reference_from_val"] == [5, 5, 5]  # all val has


def test_near_copies_of_training_images_and_noise(sets):
    train, _, test = sets
    copies = train.subset(np.arange(len(train)))
    rep = near_copies(ImageSet(copies.images, copies.labels, K), train, test)
    assert rep["near_copy_rate"] == 1.0 and rep["near_copy_rate_per_class"] == [1.0, 1.0, 1.0]
    noise = np.random.RandomState(5).randint(0, 256, (30, S, S, 1)).astype(np.uint8)
    rep = near_copies(ImageSet(noise, np.arange(30) % K, K), train, test)
    assert rep["near_copy_rate"] == 0.0 and rep["near_copy_threshold"] > 0


def test_class_consistency_matches_a_hand_count():
    levels = {0: 20, 1: 128, 2: 240}            # dark -> class 0, mid -> 1, bright -> 2
    truth = [0, 1, 2, 2, 1, 0, 0, 2]
    given = [0, 1, 2, 0, 0, 0, 1, 2]            # conditioning labels: 5 of 8 agree with what the images show
    im = np.stack([np.full((S, S, 1), levels[t], np.uint8) for t in truth])
    rep = class_consistency(ByBrightness(), ImageSet(im, np.array(given), K))
    assert rep["class_consistency"] == pytest.approx(5 / 8)
    assert rep["class_consistency_per_class"] == [pytest.approx(2 / 4), pytest.approx(1 / 2), 1.0]


def _tiny_cfg(tmp_path, *values):
    from ltaug.config import Config, with_values

    base = {"data.image_size": S, "data.cache_dir": str(tmp_path / "datasets"), "classifier.arch": "resnet20",
            "classifier.width": 4, "classifier.batch_size": 16, "eval.evalnet_steps": 2}
    return with_values(Config(), {**base, **dict(values)})


def test_evalnet_trained_once_on_the_full_train_split_then_loaded(tmp_path, monkeypatch):
    from ltaug.eval import evalnet

    cfg = _tiny_cfg(tmp_path)
    model, info = evalnet.load_or_train_evalnet(cfg, cfg.data.cache_dir, log=None)
    assert info["cached"] is False and info["num_train"] == 1297   # digits: every train image, no long-tail profile
    monkeypatch.setattr(evalnet, "train_classifier", lambda *a, **k: pytest.fail("the cached evalnet was retrained"))
    again, info2 = evalnet.load_or_train_evalnet(cfg, cfg.data.cache_dir, log=None)
    assert info2["cached"] is True and info2["checkpoint"] == info["checkpoint"]
    x = torch.rand(4, 1, S, S) * 2 - 1
    assert torch.allclose(model(x), again(x), atol=1e-5)
    other = _tiny_cfg(tmp_path, ("eval.evalnet_steps", 3))            # other settings: another cache entry
    assert evalnet.evalnet_dir(other, cfg.data.cache_dir) != evalnet.evalnet_dir(cfg, cfg.data.cache_dir)
    # the run's seed does not change the evaluation space (one evalnet for every seed); eval.evalnet_seed does
    assert evalnet.evalnet_dir(_tiny_cfg(tmp_path, ("seed", 7)), cfg.data.cache_dir) == evalnet.evalnet_dir(cfg, cfg.data.cache_dir)
    assert evalnet.evalnet_dir(_tiny_cfg(tmp_path, ("eval.evalnet_seed", 1)), cfg.data.cache_dir) != \
        evalnet.evalnet_dir(cfg, cfg.data.cache_dir)


def test_inception_input_transform():
    x = torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1).expand(2, 1, 4, 4)
    y = inception_input(x)
    assert y.shape == (2, 3, 299, 299)
    mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))
    assert torch.allclose(y[0, :, 100, 100], (0 - mean) / std, atol=1e-5)   # black
    assert torch.allclose(y[1, :, 100, 100], (1 - mean) / std, atol=1e-5)   # white


def test_inception_loads_strictly_and_a_partial_state_dict_fails(tmp_path):
    from torchvision.models import inception_v3

    sd = inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict()
    torch.save(sd, tmp_path / "full.pt")
    net = load_inception(str(tmp_path / "full.pt"))
    assert isinstance(net.fc, nn.Identity) and net.transform_input is True
    torch.save({k: v for k, v in sd.items() if not k.startswith("Mixed_7c")}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"eval.inception_weights: .*partial.pt.*missing key"):
        load_inception(str(tmp_path / "partial.pt"))
    with pytest.raises(ValueError, match="never downloads"):
        load_inception(EvalConfig().inception_weights)


def test_evaluate_job_diffusion_protocol_end_to_end(tmp_path, capsys):
    import importlib.util

    from ltaug.cli import job_main
    from ltaug.stages import train_diffusion

    tiny = ["data.image_size=8", "model.preset=custom", "model.ch=8", "model.ch_mult=[1,2]", "model.attn_resolutions=[]",
            "model.groups=4", "train.steps=2", "train.ckpt_every=0", "diffusion.timesteps=50", "sample.steps=2",
            "tracking.uri=none", f"run.output_dir={tmp_path / 'runs'}", "classifier.width=4", "classifier.arch=resnet20",
            "eval.num_per_class=3", "eval.evalnet_steps=2", "eval.cas_steps=2", "eval.kid_subsets=3"]
    quick = ["--config", str(ROOT / "configs" / "quickstart.yaml")]
    assert job_main("train_diffusion", "", lambda cfg, run, launcher, args: train_diffusion(cfg, run, launcher),
                    [*quick, *tiny, "run.name=d"]) == 0
    capsys.readouterr()
    spec = importlib.util.spec_from_file_location("evaluate_job", ROOT / "jobs" / "evaluate.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    with pytest.raises(SystemExit):
        job.job_main("evaluate", job.__doc__, job.body, ["--help"])
    assert "model.checkpoint" in capsys.readouterr().out
    ckpt = str(tmp_path / "runs" / "d" / "checkpoints")
    assert job.job_main("evaluate", job.__doc__, job.body, [*quick, *tiny, "run.name=e", f"model.checkpoint={ckpt}"]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    rep = json.loads((run_dir / "evaluation.json").read_text())
    with np.load(run_dir / "samples.npz") as z:
        assert z["images"].shape == (30, 8, 8, 1) and z["images"].dtype == np.uint8
        assert np.bincount(z["labels"]).tolist() == [3] * 10
    for key in SCALAR_KEYS:
        assert isinstance(rep[key], float) and math.isfinite(rep[key]), key
        assert summary["diffusion"][key] == rep[key]
    assert rep["features"] == "evalnet" and len(rep["per_class"]) == 10 and "acc_all" not in summary
    # the quality gate of minority guidance: the same seeds per scale, scored on validation, a plot and a choice
    assert job.job_main("evaluate", job.__doc__, job.body, [*quick, *tiny, "run.name=g", f"model.checkpoint={ckpt}",
                                                            "eval.cas_steps=0", "eval.minority_scales=[0.5]"]) == 0
    gate_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    gate = json.loads((gate_dir / "minority_gate.json").read_text())
    assert [r["scale"] for r in gate["rows"]] == [0.0, 0.5] and gate["rows"][0]["passes"] is True
    assert gate["chosen_scale"] in (0.0, 0.5) and gate["reference"] == "validation split, class-balanced"
    assert all(isinstance(r[k], float) for r in gate["rows"] for k in ("precision", "class_consistency", "avg_knn"))
    assert (gate_dir / "minority_gate.png").stat().st_size > 5000
    assert json.loads((gate_dir / "summary.json").read_text())["minority_gate"]["chosen_scale"] == gate["chosen_scale"]
    assert job.job_main("evaluate", job.__doc__, job.body, [*quick, *tiny, "run.name=none"]) == 2  # nothing to evaluate
    assert "model.checkpoint" in capsys.readouterr().err
