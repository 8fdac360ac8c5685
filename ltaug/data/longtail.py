"""Long-tailed subsets of a balanced train set (Cao et al. 2019, LDAM-DRW; the CIFAR-LT protocol).

Exponential profile: n_c = floor(n_max * r^(-c/(C-1))), class 0 the head. Step profile: the first
(1 - step_fraction) of classes keep n_max, the rest keep floor(n_max / r). The per-class selection is
seeded exactly like the CIFAR-LT code (``np.random.seed(0)``; per class, shuffle that class's indices
in dataset order and keep the first n_c), so CIFAR-10 r=100 gives 5000, 2997, ..., 50.
The validation split continues the same per-class shuffle (:func:`select_train_val`): it takes the
images the profile leaves unused first, so the protocol's train images stay exactly the same.
"""
from __future__ import annotations

import math

import numpy as np


def exp_profile(n_max: int, num_classes: int, ratio: float) -> list[int]:
    """n_c = floor(n_max * r^(-c/(C-1))) for c = 0..C-1."""
    if num_classes == 1:
        return [n_max]
    return [int(math.floor(n_max * (1.0 / ratio) ** (c / (num_classes - 1)))) for c in range(num_classes)]


def step_profile(n_max: int, num_classes: int, ratio: float, minority_fraction: float = 0.5) -> list[int]:
    n_minor = int(round(num_classes * minority_fraction))
    n_major = num_classes - n_minor
    return [n_max if c < n_major else int(math.floor(n_max / ratio)) for c in range(num_classes)]


def profile_counts(kind: str, n_max: int, num_classes: int, ratio: float, step_fraction: float = 0.5) -> list[int]:
    if kind == "exp":
        return exp_profile(n_max, num_classes, ratio)
    if kind == "step":
        return step_profile(n_max, num_classes, ratio, step_fraction)
    raise ValueError(f"unknown long-tail profile {kind!r}; choose exp or step")


def select_indices(labels: np.ndarray, target: list[int], seed: int = 0) -> np.ndarray:
    """Indices of a long-tailed subset: for each class c, a seeded shuffle of its indices, first n_c kept.

    Mirrors ``IMBALANCECIFAR10.gen_imbalanced_data`` (one global RNG seeded once, classes in order).
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    keep = []
    for c, n in enumerate(target):
        idx = np.where(labels == c)[0]
        if n > len(idx):
            raise ValueError(f"class {c}: the profile asks for {n} images but only {len(idx)} exist")
        rng.shuffle(idx)
        keep.append(idx[:n])
    return np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)


def select_train_val(labels: np.ndarray, target: list[int], val_per_class: int, max_holdout: float,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(train indices, val indices, held_out per class): the long-tailed subset plus a validation split.

    The train selection is exactly :func:`select_indices` (same RNG stream), so the images the
    profile keeps are the CIFAR-LT protocol's. For each class c the validation images continue the
    same shuffle: first the images the profile leaves unused (``idx[n_c:]``); when those are fewer
    than ``val_per_class``, the rest is held out of the class's selected train images (the last ones
    selected), at most ``floor(max_holdout * n_c)`` of them. ``held_out[c]`` is that number: the
    train count of class c is ``target[c] - held_out[c]``, and the caller reports it.
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    train, val, held = [], [], []
    for c, n in enumerate(target):
        idx = np.where(labels == c)[0]
        if n > len(idx):
            raise ValueError(f"class {c}: the profile asks for {n} images but only {len(idx)} exist")
        rng.shuffle(idx)
        unused = idx[n:n + val_per_class]
        h = min(val_per_class - len(unused), int(math.floor(max_holdout * n)))
        train.append(idx[:n - h])
        val.append(np.concatenate([unused, idx[n - h:n]]))
        held.append(int(h))
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)  # noqa: E731
    return cat(train).astype(np.int64), cat(val).astype(np.int64), held
