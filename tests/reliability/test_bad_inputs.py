"""The bad-input corpus: every file gets a clear error naming the file/record/key, or a counted skip."""
from __future__ import annotations

from pathlib import Path

import pytest

from ltaug.config import ConfigError, load_config
from ltaug.data import load_dataset
from ltaug.data.sources import SOURCES, DataError

CORPUS = Path(__file__).resolve().parent / "corpus"


def dcfg(*sets):
    return load_config(None, list(sets)).data


DATA_CASES = [
    # (source, corpus dir, error regex, records left after a counted skip or None if not skippable)
    ("imagefolder", "folder_corrupt_png", r"b/broken.png: cannot decode image", 2),
    ("imagefolder", "folder_truncated_jpeg", r"a/cut.jpg: cannot decode image", 2),
    ("imagefolder", "folder_empty_class", r"class 'b' has no images \(empty class\)", None),
    ("cifar10", "cifar_truncated", r"data_batch_1: not a readable CIFAR pickle .*truncated", None),
    ("cifar10", "cifar_bad_label", r"data_batch_1: record 9 has label 10", 9),
    ("mnist", "idx_wrong_magic", r"train-images-idx3-ubyte: wrong IDX magic 0x00000804", None),
    ("imagenet_lt", "list_missing", r"img/missing.jpg: image file not found", 1),
]


@pytest.mark.parametrize("source, folder, error, left", DATA_CASES, ids=[c[1] for c in DATA_CASES])
def test_bad_data_is_named_or_counted(source, folder, error, left):
    root = CORPUS / folder
    with pytest.raises(DataError, match=error):
        SOURCES[source](dcfg(f"data.source={source}", f"data.root={root}"), "train")
    if left is not None:
        s = SOURCES[source](dcfg(f"data.source={source}", f"data.root={root}", "data.on_bad_record=skip"), "train")
        assert len(s) == left and s.skipped >= 1


def test_empty_class_in_long_tail_construction():
    with pytest.raises(ValueError, match=r"class\(es\) \[1\] have no training images"):
        from ltaug.data import ImageSet, make_long_tailed
        import numpy as np

        full = ImageSet(np.zeros((3, 4, 4, 1), np.uint8), np.array([0, 0, 2]), 3, source="toy")
        make_long_tailed(full, dcfg("data.imbalance_ratio=10"))


CONFIG_CASES = [
    ("nan_ratio.yaml", r"data.imbalance_ratio: nan is not a finite number"),
    ("negative_steps.yaml", r"train.steps: -5 is out of range; allowed: >= 0"),
    ("inf_lr.yaml", r"train.lr: inf is not a finite number"),
    ("unknown_loss.yaml", r"unknown key 'loss.focal'.*cbdm"),
    ("unknown_guidance.yaml", r"unknown key 'guidance.pag'.*minority"),
    ("negative_omega.yaml", r"guidance.cfg.omega: -2.0 is out of range"),
]


@pytest.mark.parametrize("name, error", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_configs_name_file_and_key(name, error):
    with pytest.raises(ConfigError, match=name.replace(".", r"\.") + ": " + error):
        load_config(CORPUS / "configs" / name)
