"""Contract over the ``SOURCES`` registry: every source, on small files in its real format, returns an ImageSet
of the configured size and channels, uint8 pixels, int64 labels in range, one class name per class, and the
same classes in train and test. A source added to the registry without a writer here fails this test."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from formats import write_cifar10, write_cifar100, write_idx, write_imagefolder, write_list_dataset, write_shard
from ltaug.config import DataConfig, load_config
from ltaug.config.data import SOURCES as SOURCE_CHOICES
from ltaug.data.sources import SOURCES


def _webdataset(root: Path) -> Path:
    rng = np.random.RandomState(0)
    for split, n in (("train", 4), ("test", 2)):
        write_shard(root / split / f"{split}-000000.tar",
                    [(f"k{c}_{i}", rng.randint(0, 256, (10, 10, 3), dtype=np.uint8), c) for c in range(3) for i in range(n)])
    return root


def _imagefolder(root: Path) -> Path:
    write_imagefolder(root, {"ant": 4, "bee": 4, "cow": 4}, "train")
    return write_imagefolder(root, {"ant": 2, "bee": 2, "cow": 2}, "test", seed=1)


def _list(root: Path) -> Path:
    write_list_dataset(root, {0: 4, 1: 4, 2: 4}, "ImageNet_LT_train.txt")
    return write_list_dataset(root, {0: 2, 1: 2, 2: 2}, "ImageNet_LT_test.txt", seed=1)


WRITERS = {
    "digits": None,                                       # embedded in scikit-learn
    "mnist": lambda r: write_idx(r, 3, 2),
    "fashion_mnist": lambda r: write_idx(r, 3, 2),
    "cifar10": lambda r: write_cifar10(r, 3, 2, batches=2),
    "cifar100": lambda r: write_cifar100(r, 1, 1),
    "imagefolder": _imagefolder,
    "imagenet_lt": _list,
    "webdataset": _webdataset,
}


def test_registry_matches_the_config_choices_and_every_source_has_a_writer():
    assert set(SOURCES) == set(SOURCE_CHOICES) == set(WRITERS)


@pytest.mark.parametrize("name", sorted(SOURCES))
@pytest.mark.parametrize("channels", [1, 3])
def test_source_contract(name, channels, tmp_path):
    root = WRITERS[name](tmp_path) if WRITERS[name] else None
    sets = [f"data.source={name}", "data.image_size=8", f"data.channels={channels}"]
    if root is not None:
        sets.append(f"data.root={root}")
    cfg: DataConfig = load_config(None, sets).data
    splits = {s: SOURCES[name](cfg, s) for s in ("train", "test")}
    for split, s in splits.items():
        assert s.images.dtype == np.uint8 and s.images.shape[1:] == (8, 8, channels), (split, s.images.shape)
        assert s.labels.dtype == np.int64 and len(s.labels) == len(s.images) > 0
        assert 0 <= s.labels.min() and s.labels.max() < s.num_classes
        assert len(s.class_names) == s.num_classes and all(isinstance(n, str) and n for n in s.class_names)
        assert s.skipped == 0
    assert splits["train"].num_classes == splits["test"].num_classes
    assert splits["train"].class_names == splits["test"].class_names
