"""scikit-learn's bundled 8x8 digits (1797 images, 10 classes): the embedded default, nothing to download.

Split: per class, a seeded shuffle; the first ``data.digits_test_per_class`` images form the balanced
test set, the rest the (balanced, ~130 per class) train set that the long-tail profile is applied to.
"""
from __future__ import annotations

import numpy as np

from ...config import DataConfig
from ..types import ImageSet
from .common import finish

DIGITS_MAX = 16.0  # pixel range of sklearn digits is 0..16


def load_digits_split(cfg: DataConfig, split: str) -> ImageSet:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / DIGITS_MAX)).clip(0, 255).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int64)
    rng = np.random.RandomState(cfg.selection_seed)
    test_idx, train_idx = [], []
    for c in range(10):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        test_idx.append(idx[:cfg.digits_test_per_class])
        train_idx.append(idx[cfg.digits_test_per_class:])
    idx = np.sort(np.concatenate(test_idx if split == "test" else train_idx))
    return finish(cfg, images[idx], labels[idx], 10, f"digits[{split}]", tuple(str(i) for i in range(10)))
