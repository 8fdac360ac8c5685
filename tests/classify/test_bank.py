"""Feature bank, ID / AID / OOD categories on constructed points, the batch filter, checkpoint round trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ltaug.classify import (CATEGORIES, FeatureBank, IdAidOodFilter, build_bank, categorize, keep_mask,
                            load_classifier, shares, train_classifier)
from ltaug.config import ClassifierConfig
from ltaug.data import ImageSet
from ltaug.train import LocalWorld


def test_bank_centres_and_radii_on_constructed_points():
    phi = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [10.0, 10.0], [12.0, 10.0]])
    y = torch.tensor([0, 0, 0, 1, 1])
    bank = build_bank(phi, y, num_classes=3)
    assert torch.allclose(bank.centers[0], torch.tensor([2 / 3, 4 / 3]))
    assert torch.allclose(bank.centers[1], torch.tensor([11.0, 10.0]))
    d0 = (phi[:3] - bank.centers[0]).norm(dim=1)
    assert bank.radii[0] == pytest.approx(float(d0.max()))
    assert bank.radii[1] == pytest.approx(1.0)
    assert bank.radii[2] == 0 and bank.counts.tolist() == [3, 2, 0]   # empty class: everything OOD
    q = build_bank(phi, y, 3, radius="quantile", quantile=0.5)
    assert q.radii[0] == pytest.approx(float(d0.median()))


def test_categories_id_aid_ood_at_the_boundaries():
    bank = FeatureBank(torch.tensor([[0.0, 0.0], [10.0, 0.0]]), torch.tensor([1.0, 2.0]))
    phi = torch.tensor([[0.5, 0.0], [1.0, 0.0], [1.5, 0.0], [2.0, 0.0], [2.01, 0.0],
                        [10.0, 2.0], [10.0, 3.0], [10.0, 4.0], [10.0, 4.5]])
    y = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1])
    d, cat = bank.categorize(phi, y)
    assert torch.allclose(d, torch.tensor([0.5, 1.0, 1.5, 2.0, 2.01, 2.0, 3.0, 4.0, 4.5]))
    assert [CATEGORIES[c] for c in cat] == ["id", "id", "aid", "aid", "ood", "id", "aid", "aid", "ood"]
    assert keep_mask(cat, ("id", "aid")).tolist() == [True] * 4 + [False] + [True] * 3 + [False]
    assert keep_mask(cat, ("aid",)).tolist() == [c == 1 for c in cat.tolist()]
    assert shares(cat) == pytest.approx({"id": 3 / 9, "aid": 4 / 9, "ood": 2 / 9})
    assert categorize(torch.tensor([3.0]), torch.tensor([1.0])).item() == 2
    with pytest.raises(ValueError, match="unknown categories"):
        keep_mask(cat, ("id", "maybe"))


def test_bank_state_dict_round_trip():
    bank = FeatureBank(torch.randn(4, 8), torch.rand(4), torch.tensor([5, 4, 3, 2]))
    back = FeatureBank.from_state_dict(bank.state_dict())
    assert torch.equal(back.centers, bank.centers) and torch.equal(back.radii, bank.radii)
    with pytest.raises(ValueError, match="centers"):
        FeatureBank(torch.zeros(3, 2), torch.zeros(2))


def _tiny_set(n_per_class=(12, 6, 3), size=8, seed=0) -> ImageSet:
    rng = np.random.RandomState(seed)
    imgs, labels = [], []
    for c, n in enumerate(n_per_class):
        base = np.zeros((size, size), np.uint8)
        base[:, c * size // 3:(c + 1) * size // 3] = 255   # a class-specific stripe
        for _ in range(n):
            noise = rng.randint(0, 40, (size, size)).astype(np.uint8)
            imgs.append(np.clip(base.astype(int) - noise, 0, 255).astype(np.uint8)[..., None])
            labels.append(c)
    return ImageSet(np.stack(imgs), np.array(labels), len(n_per_class), source="tiny")


TINY = ClassifierConfig(arch="resnet20", width=4, steps=3, batch_size=8, augment="none", log_every=1)


def test_checkpoint_round_trip_carries_the_feature_bank(tmp_path):
    data = _tiny_set()
    r = train_classifier(TINY, data, LocalWorld("cpu"), ckpt_dir=str(tmp_path / "ck"), progress=False)
    assert r.checkpoint and r.checkpoint.endswith("ckpt-000000003.pt") and r.steps == 3
    for uri in (r.checkpoint, str(tmp_path / "ck")):        # a file, or its directory
        model, bank = load_classifier(uri)
        x, _ = data.tensors()
        with torch.no_grad():
            assert torch.allclose(model(x), r.model(x), atol=1e-5)
        assert torch.allclose(bank.centers, r.bank.centers) and torch.allclose(bank.radii, r.bank.radii)
    assert bank.centers.shape == (3, model.feature_dim)
    # every real image is ID under the default radius (max distance)
    x, y = data.tensors()
    with torch.no_grad():
        _, cat = bank.categorize(model.features(x), y)
    assert (cat == 0).all()


def test_filter_is_a_pure_function_over_batch_dicts(tmp_path):
    data = _tiny_set()
    r = train_classifier(TINY, data, LocalWorld("cpu"), progress=False)
    far = FeatureBank(r.bank.centers + 1e3, r.bank.radii)   # nothing is near these centres
    batch = {"image": data.images, "label": data.labels, "key": np.array([f"k{i}" for i in range(len(data))])}
    out = IdAidOodFilter(r.model, r.bank, drop=True)(batch)
    assert len(out["key"]) == len(data) and (out["category"] == 0).all() and out["distance"].dtype == np.float32
    out = IdAidOodFilter(r.model, far, drop=True)(batch)
    assert len(out["key"]) == 0 and len(out["image"]) == 0
    out = IdAidOodFilter(r.model, far, keep=("ood",), drop=False)(batch)
    assert out["keep"].all() and (out["category"] == 2).all() and len(out["label"]) == len(data)


def test_rerun_resumes_from_the_finished_checkpoint(tmp_path):
    data = _tiny_set()
    a = train_classifier(TINY, data, LocalWorld("cpu"), ckpt_dir=str(tmp_path / "ck"), progress=False)
    b = train_classifier(TINY, data, LocalWorld("cpu"), ckpt_dir=str(tmp_path / "ck"), progress=False)
    assert b.checkpoint == a.checkpoint and b.steps == a.steps and not b.history
    assert torch.allclose(b.bank.centers, a.bank.centers, atol=1e-5)
    _, bank = load_classifier(b.checkpoint)
    assert torch.allclose(bank.radii, a.bank.radii, atol=1e-5)
