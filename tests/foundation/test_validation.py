"""The validation split: disjoint from train and test (by source indices), drawn first from the images the
long-tail profile leaves unused (CIFAR-LT train images exactly the protocol's), otherwise held out of train
and reported; stored in the dataset artifact; reported by inspect_data."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ltaug.config import load_config
from ltaug.data import exp_profile, load_data, load_dataset, select_indices
from ltaug.data.dataset import val_note, val_report
from ltaug.data.sources import SOURCES
from ltaug.data.types import ImageSet

PER_CLASS, TEST_PER_CLASS, K = 5000, 10, 10     # balanced CIFAR-10 sizes (train), a small test split


def _code(ids: np.ndarray, offset: int) -> np.ndarray:
    """uint8 [N,2,2,1] images that spell out their source row id (+ offset), so images identify themselves."""
    v = ids.astype(np.int64) + offset
    px = np.stack([v % 256, (v // 256) % 256, v // 65536, np.zeros_like(v)], axis=1).astype(np.uint8)
    return px.reshape(-1, 2, 2, 1)


def _decode(images: np.ndarray) -> np.ndarray:
    p = images.reshape(len(images), 4).astype(np.int64)
    return p[:, 0] + 256 * p[:, 1] + 65536 * p[:, 2]


@pytest.fixture
def cifar_like(monkeypatch):
    """A balanced 10-class source with CIFAR-10's 5000 train images per class, labels interleaved like CIFAR."""
    rng = np.random.RandomState(123)
    train_y = rng.permutation(np.repeat(np.arange(K), PER_CLASS))
    test_y = np.repeat(np.arange(K), TEST_PER_CLASS)

    def source(cfg, split):
        y = train_y if split == "train" else test_y
        return ImageSet(_code(np.arange(len(y)), 0 if split == "train" else 100_000), y.astype(np.int64), K,
                        tuple(f"c{i}" for i in range(K)), f"fake[{split}]")

    monkeypatch.setitem(SOURCES, "cifar10", source)
    return train_y


def dcfg(*sets):
    return load_config(None, ["data.source=cifar10", "data.root=unused", "data.imbalance_ratio=100", *sets]).data


def test_cifar_lt_counts_exact_and_val_from_unused_images(cifar_like):
    d = load_dataset(dcfg())
    profile = exp_profile(PER_CLASS, K, 100)
    assert profile == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    protocol = select_indices(cifar_like, profile, 0)          # the CIFAR-LT protocol's train images
    # the head class uses all 5000 images: its 20 validation images are held out of train (and reported)
    assert d.val_held_out == (20,) + (0,) * 9
    assert d.train.counts.counts == (4980,) + tuple(profile[1:])
    assert d.validation.counts.counts == (20,) * K
    # every train image is a protocol image; classes 1..9 keep exactly the protocol's images
    assert set(d.train.indices) <= set(protocol)
    for c in range(1, K):
        assert set(d.train.indices[d.train.labels == c]) == set(protocol[cifar_like[protocol] == c])
        assert not set(d.val.indices[d.val.labels == c]) & set(protocol)   # drawn from the unused images
    # disjoint train / val / test, by source indices and by the images themselves
    assert not set(d.train.indices) & set(d.val.indices)
    assert np.array_equal(_decode(d.train.images), d.train.indices) and np.array_equal(_decode(d.val.images), d.val.indices)
    test_ids = set(_decode(d.test.images))
    assert min(test_ids) >= 100_000 and not test_ids & (set(_decode(d.train.images)) | set(_decode(d.val.images)))
    assert np.array_equal(d.train.labels, cifar_like[d.train.indices])
    assert np.array_equal(d.val.labels, cifar_like[d.val.indices])
    # groups from the train counts (4980 is still "many")
    assert 0 in d.groups["many"]
    note = val_note(d)
    assert "held out of train" in note and "{0: 20}" in note


def test_without_holdout_every_train_count_is_the_protocols(cifar_like):
    d = load_dataset(dcfg("data.val_max_holdout=0"))
    profile = exp_profile(PER_CLASS, K, 100)
    assert d.train.counts.counts == tuple(profile)
    assert np.array_equal(np.sort(d.train.indices), np.sort(select_indices(cifar_like, profile, 0)))
    assert d.val_held_out == (0,) * K
    assert d.validation.counts.counts == (0,) + (20,) * 9        # the head class has no unused image
    assert val_report(d) == {"val_counts": [0] + [20] * 9, "val_held_out": [0] * K}


def test_holdout_is_capped_by_the_fraction(cifar_like):
    d = load_dataset(dcfg("data.max_per_class=40", "data.imbalance_ratio=10", "data.val_per_class=30",
                          "data.val_max_holdout=0.25"))
    profile = exp_profile(40, K, 10)
    # max_per_class=40 leaves 5000 - n_c unused images in every class: nothing held out
    assert d.train.counts.counts == tuple(profile) and d.val_held_out == (0,) * K
    d = load_dataset(dcfg("data.imbalance_ratio=1", "data.val_per_class=30", "data.val_max_holdout=0.25"))
    assert d.val_held_out == (30,) * K and d.train.counts.counts == (4970,) * K   # keep-all: held out of train
    assert np.all(np.diff(d.train.indices) > 0)                                    # an unprofiled source keeps its order


def test_val_per_class_zero_means_no_validation_split(cifar_like):
    d = load_dataset(dcfg("data.val_per_class=0"))
    assert len(d.validation) == 0 and d.val_held_out == (0,) * K
    assert d.train.counts.counts == tuple(exp_profile(PER_CLASS, K, 100))
    assert "no validation split" in val_note(d)


def test_digits_default_has_a_validation_split():
    """The tiny embedded digits (~124-128 train images per class after the 50-per-class test split)."""
    d = load_dataset(load_config(None, []).data)
    assert d.validation.counts.counts == (20,) * 10
    held = d.val_held_out
    assert held[0] > 0 and sum(held[1:]) == 0          # only the head class uses (almost) all its images
    assert held[0] <= math.floor(0.2 * (d.train.counts.counts[0] + held[0]))
    assert not set(d.train.indices) & set(d.val.indices)
    assert all(d.groups.values())
    keep_all = load_dataset(load_config(None, ["data.imbalance_ratio=1"]).data)
    assert keep_all.validation.counts.counts == (20,) * 10 and keep_all.val_held_out == (20,) * 10


def test_artifact_stores_the_validation_split(cifar_like, tmp_path):
    dc = dcfg("data.image_size=4")   # the fake source makes 2x2 images whatever the size
    ds, uri = load_data(dc, str(tmp_path))
    ref = load_dataset(dc)
    assert np.array_equal(ds.val.indices, ref.val.indices) and np.array_equal(ds.val.images, ref.val.images)
    assert ds.val_held_out == ref.val_held_out == (20,) + (0,) * 9
    assert ds.validation.counts == ref.validation.counts


def test_inspect_data_reports_val_counts(tmp_path):
    from ltaug.stages import inspect_data
    from ltaug.stages.run import open_run

    cfg = load_config(None, [f"run.output_dir={tmp_path}", "tracking.uri=none", "data.image_size=8"])
    s = inspect_data(cfg, open_run(cfg, "inspect_data"))
    assert s["val_counts"] == [20] * 10 and s["val_held_out"][0] > 0
    assert [t + h for t, h in zip(s["train_counts"], s["val_held_out"])][1:] == s["train_counts"][1:]


def test_inspect_data_reports_a_profile_that_drops_most_images(tmp_path, capsys):
    from formats import write_imagefolder
    from ltaug.stages import inspect_data
    from ltaug.stages.run import open_run

    write_imagefolder(tmp_path / "d", {"ant": 30, "bee": 30, "cat": 30}, "train", size=6)
    write_imagefolder(tmp_path / "d", {"ant": 2, "bee": 2, "cat": 2}, "test", size=6)
    base = [f"run.output_dir={tmp_path}/runs", "tracking.uri=none", "data.image_size=6", "data.source=imagefolder",
            f"data.root={tmp_path}/d", "data.val_per_class=0"]
    s = inspect_data(load_config(None, base), open_run(load_config(None, base), "inspect_data"))
    assert s["train_counts"] == [30, 30, 30] and s["warnings"] == []            # your own data: kept as it is
    assert s["profile"]["profile"] == "natural" and s["profile"]["imbalance_ratio"] == 1.0
    cfg = load_config(None, base + ["data.imbalance_ratio=10"])
    s = inspect_data(cfg, open_run(cfg, "inspect_data"))
    assert s["profile"]["dropped_images"] == 48 and "keeps 42 of the 90" in s["warnings"][0]
    assert "WARNING: the long-tail profile keeps 42 of the 90" in capsys.readouterr().out
