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


def test_ldam_drw_recipe_schedule_matches_the_reference_code():
    """kaidic/LDAM-DRW adjust_learning_rate (epoch e from 1): lr*e/5 for e <= 5, lr*0.01 for 160 < e <= 180,
    lr*0.0001 for e > 180. The CIFAR presets express it as warmup 0.025, milestones [0.8, 0.9], lr_gamma 0.01."""
    from ltaug.train.loop import lr_factor

    for preset in ("cifar10-lt", "cifar100-lt"):
        c = load_config(f"configs/{preset}.yaml").classifier
        assert (c.warmup, c.milestones, c.lr_gamma, c.epochs, c.batch_size, c.lr) == (0.025, (0.8, 0.9), 0.01, 200, 128, 0.1)
        assert (c.momentum, c.weight_decay) == (0.9, 2e-4)
    c = load_config("configs/cifar10-lt.yaml").classifier
    n = 128 * 100                                            # 100 steps per epoch
    spec = loop_spec(c, n)

    def reference(epoch0: int) -> float:                     # the reference's factor of 0-based epoch
        e = epoch0 + 1
        return e / 5 if e <= 5 else 1e-4 if e > 180 else 1e-2 if e > 160 else 1.0

    for epoch0 in (10, 100, 159, 160, 170, 179, 180, 199):
        step = epoch0 * 100 + 50
        assert lr_factor(spec, step) == pytest.approx(reference(epoch0), rel=1e-9), epoch0
    assert spec.warmup == 500   # 5 epochs, linear (per step here, per epoch in the reference)


def test_ldam_drw_trains_with_a_cosine_head_and_reloads(tmp_path):
    from ltaug.classify import load_classifier
    from ltaug.classify.resnet import NormedLinear

    real = _tiny_set()
    cfg = ClassifierConfig(arch="resnet20", width=4, steps=4, batch_size=8, augment="none", method="ldam_drw",
                           drw_start=0.5)
    r = train_classifier(cfg, real, LocalWorld("cpu"), ckpt_dir=str(tmp_path / "ck"), progress=False)
    assert isinstance(r.model.fc, NormedLinear) and r.spec.normed_linear
    assert all(np.isfinite(h["loss"]) for h in r.history)
    model, bank = load_classifier(r.checkpoint)
    assert isinstance(model.fc, NormedLinear) and bank is not None
    x, _ = real.tensors()
    with torch.no_grad():
        assert torch.allclose(model(x), r.model(x), atol=1e-5)


class _FakeWorld:
    """Two ranks in one process, no process group: SyncBatchNorm then falls back to plain batch norm."""

    def __init__(self, world_size: int, device: str = "cpu") -> None:
        self.rank, self.world_size, self.device = 0, world_size, torch.device(device)
        self.wrapped = None

    @property
    def is_main(self) -> bool:
        return True

    def wrap(self, model):
        self.wrapped = model
        return model.to(self.device)

    def all_reduce_mean(self, value):
        return value

    def all_gather(self, value):
        return value

    def report(self, metrics, step, checkpoint_dir=None) -> None:
        pass


def test_batchnorm_becomes_sync_batchnorm_under_several_accelerator_workers():
    from ltaug.classify.resnet import ModelSpec, build_classifier
    from ltaug.classify.trainer import with_sync_batchnorm

    def bns(m):
        return [type(x) for x in m.modules() if isinstance(x, torch.nn.modules.batchnorm._BatchNorm)]

    spec = ModelSpec("resnet20", 3, 1, 8, width=4)
    m, done = with_sync_batchnorm(build_classifier(spec), _FakeWorld(2, "cuda"))   # the device is not touched
    assert done and bns(m) and set(bns(m)) == {torch.nn.SyncBatchNorm}
    plain = build_classifier(spec)
    plain.load_state_dict(m.state_dict())                      # the same keys: checkpoints load into BatchNorm2d
    for world in (_FakeWorld(1, "cuda"), _FakeWorld(2, "cpu")):  # one worker; CPU workers (SyncBN refuses CPU)
        m, done = with_sync_batchnorm(build_classifier(spec), world)
        assert not done and set(bns(m)) == {torch.nn.BatchNorm2d}


def test_train_classifier_converts_before_wrapping(monkeypatch, tmp_path):
    from ltaug.classify import load_classifier, trainer

    monkeypatch.setattr(trainer, "SYNC_BN_DEVICES", ("cpu",))   # let the fake 2-rank CPU world count
    world = _FakeWorld(2)
    cfg = ClassifierConfig(arch="resnet20", width=4, steps=2, batch_size=8, augment="none")
    r = train_classifier(cfg, _tiny_set(), world, ckpt_dir=str(tmp_path / "ck"), progress=False)
    assert r.sync_batchnorm and any(isinstance(x, torch.nn.SyncBatchNorm) for x in world.wrapped.modules())
    model, _ = load_classifier(r.checkpoint)
    assert not any(isinstance(x, torch.nn.SyncBatchNorm) for x in model.modules())
    single = train_classifier(cfg, _tiny_set(), _FakeWorld(1), progress=False)
    assert not single.sync_batchnorm
