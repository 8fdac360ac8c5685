"""``load_dataset(cfg.data)``: the long-tailed train set and the balanced test set, as configured."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import DataConfig
from .counts import ClassCounts
from .longtail import profile_counts, select_indices
from .sources import SOURCES
from .types import ImageSet


@dataclass(frozen=True)
class LTDataset:
    train: ImageSet           # long-tailed, per the profile
    test: ImageSet            # balanced
    groups: dict[str, list[int]]

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def counts(self) -> ClassCounts:
        return self.train.counts


def make_long_tailed(full: ImageSet, cfg: DataConfig) -> ImageSet:
    """Apply the configured profile to a (roughly) balanced train set."""
    counts = full.counts.counts
    empty = [c for c, n in enumerate(counts) if n == 0]
    if empty:
        raise ValueError(f"{full.source}: class(es) {empty} have no training images")
    if cfg.imbalance_ratio == 1.0 and not cfg.max_per_class:
        return full
    # n_max defaults to the smallest class, so the profile is feasible on unevenly sized sources
    # (equal to the CIFAR-LT protocol's 5000 / 500 on balanced CIFAR).
    n_max = cfg.max_per_class or min(counts)
    target = profile_counts(cfg.profile, n_max, full.num_classes, cfg.imbalance_ratio, cfg.step_fraction)
    short = [(c, t, n) for c, (t, n) in enumerate(zip(target, counts)) if t > n]
    if short:
        c, t, n = short[0]
        raise ValueError(f"{full.source}: class {c} has {n} training images but the profile needs {t}; "
                         f"lower data.max_per_class or data.imbalance_ratio")
    return full.subset(select_indices(full.labels, target, cfg.selection_seed))


def balanced_test(test: ImageSet, cfg: DataConfig) -> ImageSet:
    if not cfg.test_per_class:
        return test
    counts = test.counts.counts
    n = min(cfg.test_per_class, min(counts))
    return test.subset(select_indices(test.labels, [n] * test.num_classes, cfg.selection_seed))


def load_dataset(cfg: DataConfig) -> LTDataset:
    """Read the configured source; return the long-tailed train set, the balanced test set, the groups."""
    source = SOURCES[cfg.source]
    full_train = source(cfg, "train")
    test = balanced_test(source(cfg, "test"), cfg)
    if test.num_classes != full_train.num_classes:
        raise ValueError(f"{cfg.source}: train has {full_train.num_classes} classes, test {test.num_classes}")
    train = make_long_tailed(full_train, cfg)
    groups = train.counts.groups(cfg.groups, cfg.many_threshold, cfg.few_threshold)
    return LTDataset(train=train, test=test, groups=groups)
