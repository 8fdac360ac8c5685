"""Classifier training: digits beats chance, omega scales the loss, quotas, shards, the CIFAR-LT recipe."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from ltaug.classify import load_synthetic, loop_spec, select_synthetic, train_classifier
from ltaug.config import ClassifierConfig, load_config
from ltaug.data import ImageSet, load_dataset
from ltaug.eval import evaluate_classifier
from ltaug.train import LocalWorld

from .test_bank import _tiny_set


def test_short_training_run_on_digits_beats_chance_by_a_wide_margin():
    cfg = load_config(None, ["classifier.arch=resnet20", "classifier.steps=80", "data.image_size=8"])
    data = load_dataset(cfg.data)
    r = train_classifier(cfg, data, LocalWorld("cpu"), progress=False)
    rep = evaluate_classifier(r.model, data.test, data.groups)
    assert rep["acc_all"] > 0.5, rep          # chance is 0.1
    assert rep["acc_many"] > 0.5
    assert len(rep["per_class"]) == 10 and np.asarray(rep["confusion"]).sum() == len(data.test)


@pytest.mark.parametrize("omega", [0.0, 0.3, 1.0])
def test_synthetic_weight_scales_the_training_loss(omega):
    real = _tiny_set()
    syn = ImageSet(real.images.copy(), real.labels.copy(), real.num_classes, source="synthetic")
    n = 2 * len(real)   # one step over the whole pool: real + an exact copy as "synthetic"
    cfg = ClassifierConfig(arch="resnet20", width=4, steps=1, batch_size=n, augment="none", log_every=1,
                           synthetic_weight=omega)
    base = train_classifier(ClassifierConfig(**{**cfg.__dict__, "synthetic_weight": 1.0}), real, LocalWorld("cpu"),
                            synthetic=syn, progress=False)
    r = train_classifier(cfg, real, LocalWorld("cpu"), synthetic=syn, progress=False)
    assert r.num_synthetic == len(real)
    # (sum_real CE + omega sum_syn CE) / B with identical halves = CE_mean (1 + omega) / 2
    assert r.history[0]["loss"] == pytest.approx(base.history[0]["loss"] * (1 + omega) / 2, rel=1e-4)


def test_per_class_synthetic_quotas():
    syn = ImageSet(np.zeros((30, 4, 4, 1), np.uint8), np.repeat([0, 1, 2], 10), 3)
    g = torch.Generator().manual_seed(0)
    assert np.bincount(select_synthetic(syn, [5, 5, 5], max_per_class=4, generator=g).labels).tolist() == [4, 4, 4]
    got = select_synthetic(syn, [12, 6, 1], fill_to=12, generator=g)
    assert np.bincount(got.labels, minlength=3).tolist() == [0, 6, 10]
    got = select_synthetic(syn, [12, 6, 1], max_per_class=8, fill_to=12, generator=g)
    assert np.bincount(got.labels, minlength=3).tolist() == [0, 6, 8]


def test_cifar_lt_recipe_is_reachable_by_config():
    c = load_config(None, ["classifier.epochs=200", "classifier.batch_size=128", "classifier.warmup=0.025"]).classifier
    assert (c.lr, c.momentum, c.weight_decay) == (0.1, 0.9, 2e-4)
    spec = loop_spec(c, n_train=10847)               # CIFAR-10-LT, r = 100
    steps_per_epoch = 10847 / 128
    assert spec.steps == int(np.ceil(200 * steps_per_epoch)) and spec.optimizer == "sgd"
    assert [round(m / steps_per_epoch) for m in spec.milestones] == [160, 180]
    assert round(spec.warmup / steps_per_epoch) == 5


def test_synthetic_shards_are_mixed_in(tmp_path):
    webdataset = pytest.importorskip("webdataset")
    from PIL import Image

    real = _tiny_set()
    d = tmp_path / "shards"
    d.mkdir()
    with webdataset.TarWriter(str(d / "shard-000000.tar")) as w:
        for i in range(6):
            buf = io.BytesIO()
            Image.fromarray(real.images[i][..., 0]).save(buf, format="PNG")
            w.write({"__key__": f"s{i:04d}", "png": buf.getvalue(), "cls": str(2).encode(),
                     "json": json.dumps({"class": 2, "seed": i}).encode()})
    syn = load_synthetic(str(d), image_size=8, channels=1, num_classes=3)
    assert len(syn) == 6 and syn.num_classes == 3 and (syn.labels == 2).all()
    cfg = ClassifierConfig(arch="resnet20", width=4, steps=2, batch_size=8, synthetic_max_per_class=4)
    r = train_classifier(cfg, real, LocalWorld("cpu"), synthetic=syn, progress=False)
    assert r.num_synthetic == 4 and r.num_real == len(real)
