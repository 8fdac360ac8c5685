"""``load_dataset(cfg.data)``: the long-tailed train set, the validation split and the balanced test set.

The validation split (``data.val_per_class`` images per class) comes from the source's train split,
disjoint from the train set by construction and from the test set because the test set is another
split. It is drawn first from the images the long-tail profile leaves unused, so the train set keeps
exactly the profile's images (the CIFAR-LT counts); only where a class has too few unused images
(the head class of CIFAR-LT, every class of an unprofiled source) is the rest held out of train, at
most ``data.val_max_holdout`` of the class. ``LTDataset.val_held_out`` counts those per class, and
every summary reports it (:func:`val_report`): it is never silent.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from .. import storage
from ..config import DataConfig
from .counts import ClassCounts
from .longtail import profile_counts, select_indices, select_train_val
from .sources import SOURCES
from .sources.common import DataError
from .types import ImageSet

log = logging.getLogger("ltaug.data")

VAL_NOTE_CLASSES = 10   # classes listed by name in the log line about held-out validation images
DROP_WARN_FRACTION = 0.5  # a profile that drops more than this share of the source's train images says so loudly


@dataclass(frozen=True)
class LTDataset:
    train: ImageSet           # long-tailed, per the profile (less val_held_out)
    test: ImageSet            # balanced
    groups: dict[str, list[int]]
    val: ImageSet | None = None          # validation split; every selection uses it, never test
    val_held_out: tuple[int, ...] = ()   # per class: validation images taken out of the profile's train images
    profile: dict = field(default_factory=dict)   # profile_report(): what the long-tail profile kept and dropped

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def counts(self) -> ClassCounts:
        return self.train.counts

    @property
    def validation(self) -> ImageSet:
        """The validation split; empty (zero rows) when ``data.val_per_class`` is 0."""
        if self.val is not None:
            return self.val
        t = self.train
        return ImageSet(t.images[:0], t.labels[:0], t.num_classes, t.class_names, t.source, 0,
                        np.zeros(0, np.int64))


def val_report(data: LTDataset) -> dict[str, object]:
    """``val_counts`` (per class) and ``val_held_out`` (per class, taken out of train) for summaries."""
    K = data.num_classes
    return {"val_counts": list(data.validation.counts.counts),
            "val_held_out": list(data.val_held_out) if data.val_held_out else [0] * K}


def val_note(data: LTDataset) -> str:
    """One line for logs: the validation split and what it took out of train."""
    counts = data.validation.counts.counts
    held = {c: h for c, h in enumerate(data.val_held_out) if h}
    text = f"validation: {sum(counts)} images ({min(counts) if counts else 0}-{max(counts) if counts else 0} per class)"
    if not sum(counts):
        return text + (": no validation split (data.val_per_class=0, or the profile leaves no unused images "
                       "and data.val_max_holdout=0); val_acc_* are null")
    if held:
        shown = ", ".join(f"{c}: {h}" for c, h in list(held.items())[:VAL_NOTE_CLASSES])
        more = f", ... ({len(held)} classes)" if len(held) > VAL_NOTE_CLASSES else ""
        text += (f"; {sum(held.values())} of them held out of train (class: images) {{{shown}{more}}} because "
                 f"the profile leaves those classes too few unused images")
    else:
        text += ", all from images the long-tail profile leaves unused (train counts exactly the profile's)"
    return text


def profile_report(cfg: DataConfig, source_counts: tuple[int, ...] | list[int],
                   target: list[int] | tuple[int, ...]) -> dict:
    """What the profile does to the source's train split: ratio in effect, images before / kept / dropped, and a
    ``warning`` (empty unless more than :data:`DROP_WARN_FRACTION` of the images are dropped)."""
    total, kept = int(sum(source_counts)), int(sum(target))
    dropped = total - kept
    frac = dropped / total if total else 0.0
    warning = ""
    if frac > DROP_WARN_FRACTION:
        default = " (the source's default)" if not cfg.imbalance_ratio else ""
        warning = (f"the long-tail profile keeps {kept} of the {total} train images of {cfg.source} and drops {dropped} "
                   f"({100 * frac:.0f}%): data.profile={cfg.profile}, data.imbalance_ratio={cfg.ratio:g}{default}, "
                   f"data.max_per_class={cfg.max_per_class or 'smallest class'}. Set data.imbalance_ratio=1 to keep "
                   f"every image (the natural distribution)")
    return {"imbalance_ratio": cfg.ratio, "profile": cfg.profile if target != list(source_counts) else "natural",
            "source_images": total, "kept_images": kept, "dropped_images": dropped,
            "dropped_fraction": round(frac, 4), "source_counts": [int(n) for n in source_counts], "warning": warning}


def split_long_tailed(full: ImageSet, cfg: DataConfig) -> tuple[ImageSet, ImageSet, tuple[int, ...]]:
    """(train, val, held_out per class): the configured profile and validation split of a train split."""
    return _split(full, cfg)[:3]


def _split(full: ImageSet, cfg: DataConfig) -> tuple[ImageSet, ImageSet, tuple[int, ...], dict]:
    counts = full.counts.counts
    empty = [c for c, n in enumerate(counts) if n == 0]
    if empty:
        raise ValueError(f"{full.source}: class(es) {empty} have no training images")
    keep_all = cfg.ratio == 1.0 and not cfg.max_per_class
    if keep_all:
        target = list(counts)          # keep all: no unused images, the validation split is held out
    else:
        # n_max defaults to the smallest class, so the profile is feasible on unevenly sized sources
        # (equal to the CIFAR-LT protocol's 5000 / 500 on balanced CIFAR).
        n_max = cfg.max_per_class or min(counts)
        target = profile_counts(cfg.profile, n_max, full.num_classes, cfg.ratio, cfg.step_fraction)
        short = [(c, t, n) for c, (t, n) in enumerate(zip(target, counts)) if t > n]
        if short:
            c, t, n = short[0]
            raise ValueError(f"{full.source}: class {c} has {n} training images but the profile needs {t}; "
                             f"lower data.max_per_class or data.imbalance_ratio")
        zero = [c for c, t in enumerate(target) if t == 0]
        if zero:
            names = ", ".join(f"{c} ({full.class_names[c] if c < len(full.class_names) else str(c)!r})"
                              for c in zero[:5]) + (f", ... ({len(zero)} classes)" if len(zero) > 5 else "")
            raise DataError(f"{full.source}: the long-tail profile leaves class {names} with 0 images "
                            f"(n_max {n_max}, r {cfg.ratio:g}, profile {cfg.profile}). "
                            f"Lower data.imbalance_ratio (at most {n_max} here), raise data.max_per_class, or set "
                            f"data.imbalance_ratio=1 to keep the natural distribution")
    report = profile_report(cfg, counts, target)
    if report["warning"]:
        log.warning("%s", report["warning"])
    if not cfg.val_per_class:
        if keep_all:
            return full, full.subset(np.zeros(0, np.int64)), (0,) * full.num_classes, report
        return (full.subset(select_indices(full.labels, target, cfg.selection_seed)),
                full.subset(np.zeros(0, np.int64)), (0,) * full.num_classes, report)
    tr, va, held = select_train_val(full.labels, target, cfg.val_per_class, cfg.val_max_holdout, cfg.selection_seed)
    if keep_all:
        tr = np.sort(tr)               # an unprofiled source keeps its own order
    return full.subset(tr), full.subset(va), tuple(held), report


def make_long_tailed(full: ImageSet, cfg: DataConfig) -> ImageSet:
    """The train set of :func:`split_long_tailed` (the configured profile, less the held-out validation images)."""
    return split_long_tailed(full, cfg)[0]


def balanced_test(test: ImageSet, cfg: DataConfig) -> ImageSet:
    if not cfg.test_per_class:
        return test
    counts = test.counts.counts
    n = min(cfg.test_per_class, min(counts))
    return test.subset(select_indices(test.labels, [n] * test.num_classes, cfg.selection_seed))


def check_root(cfg: DataConfig) -> None:
    """``data.root`` reachable and readable, before anything is decoded: an ``s3://`` root's endpoint, credentials
    and bucket (:func:`ltaug.storage.check_access`); a local root's read permission."""
    if cfg.source == "digits" or not cfg.root:
        return
    try:
        storage.check_access(cfg.root)
    except storage.StorageError as e:
        raise DataError(f"data.root: {e}") from None
    if not storage.is_remote(cfg.root):
        path = storage.strip_scheme(cfg.root)
        if os.path.exists(path) and not os.access(path, os.R_OK | (os.X_OK if os.path.isdir(path) else 0)):
            raise DataError(f"data.root: {cfg.root}: permission denied (not readable by this user)")


def load_dataset(cfg: DataConfig) -> LTDataset:
    """Read the configured source; return the long-tailed train set, the validation split, the balanced
    test set and the groups (from the train counts)."""
    check_root(cfg)
    source = SOURCES[cfg.source]
    full_train = source(cfg, "train")
    test = balanced_test(source(cfg, "test"), cfg)
    if test.num_classes != full_train.num_classes:
        raise ValueError(f"{cfg.source}: train has {full_train.num_classes} classes, test {test.num_classes}")
    train, val, held, report = _split(full_train, cfg)
    groups = train.counts.groups(cfg.groups, cfg.many_threshold, cfg.few_threshold)
    return LTDataset(train=train, test=test, groups=groups, val=val, val_held_out=held, profile=report)
