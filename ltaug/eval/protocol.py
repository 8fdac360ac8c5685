"""The standard generative protocol for a class-conditional model (Ray-free, torch / numpy).

Class-uniform samples are compared, class by class, with the real *training* images of their class (topped up
with the class's validation images where it has fewer than ``min_real_per_class``), in an evaluation feature
space that takes no part in training or filtering (:mod:`ltaug.eval.features`, :mod:`ltaug.eval.evalnet`):

- ``per_class``: per class {fid, precision, recall, density, coverage, num_real, num_fake};
- pooled ``fid``, ``kid`` (+ ``kid_std``), ``precision``, ``recall``, ``density``, ``coverage`` and the low-density
  ``avg_knn``, ``lof``, ``rarity`` against a *class-balanced* reference: every sampled class contributes the same
  number of real images (the smallest per-class reference count), so no pooled number measures a class mismatch;
- ``fid_many`` / ``fid_medium`` / ``fid_few``: the same within each group's classes;
- ``class_consistency``: the evaluation network's top-1 on the samples' conditioning labels (+ per class);
- ``near_copy_rate``: share of samples whose nearest training image (L2 in [0, 1] pixel space) is at least as
  close as the 1st percentile of the test images' nearest-training distances (+ per class, + the threshold);
- ``cas_acc``: Classification Accuracy Score (Ravuri & Vinyals, NeurIPS 2019): a classifier trained on the
  samples only, top-1 on the real balanced test set (+ ``cas_acc_many/medium/few``).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..data.types import ImageSet, to_model_range
from .accuracy import evaluate_classifier, predict
from .features import FeatureSpace
from .generative import CHUNK, density_coverage, fid, kid, precision_recall
from .lowdensity import low_density_report

NEAR_COPY_PERCENTILE = 1.0
PER_CLASS_KEYS = ("fid", "precision", "recall", "density", "coverage")
SCALAR_KEYS = ("fid", "kid", "kid_std", "precision", "recall", "density", "coverage", "fid_many", "fid_medium",
               "fid_few", "avg_knn", "lof", "rarity", "class_consistency", "near_copy_rate", "cas_acc")


def reference_indices(train: ImageSet, val: ImageSet, min_real: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per class: (train rows, validation rows); validation rows only where the class has fewer than ``min_real``
    training images, as many as needed to reach ``min_real`` (or all it has)."""
    tr, va = [], []
    for c in range(train.num_classes):
        t = np.where(train.labels == c)[0]
        v = np.where(val.labels == c)[0][:max(0, min_real - len(t))] if len(val) else np.zeros(0, np.int64)
        tr.append(t)
        va.append(v)
    return tr, va


def reference_set(train: ImageSet, val: ImageSet, min_real: int) -> tuple[np.ndarray, np.ndarray, dict[str, list[int]]]:
    """(uint8 images, labels, {reference_counts, reference_from_val}) of the per-class reference."""
    tr, va = reference_indices(train, val, min_real)
    ims, labs = [], []
    for c in range(train.num_classes):
        ims += [np.asarray(train.images[tr[c]]), np.asarray(val.images[va[c]]) if len(va[c]) else None]
        labs += [np.full(len(tr[c]) + len(va[c]), c, np.int64)]
    ims = [a for a in ims if a is not None and len(a)]
    images = np.concatenate(ims) if ims else np.zeros((0, *train.images.shape[1:]), np.uint8)
    return images, np.concatenate(labs), {"reference_counts": [int(len(t) + len(v)) for t, v in zip(tr, va)],
                                          "reference_from_val": [int(len(v)) for v in va]}


def _pixels(images: np.ndarray) -> Tensor:  # uint8 [N,H,W,C] -> float32 [N, H*W*C] in [0, 1]
    return torch.from_numpy(np.asarray(images, np.float32).reshape(len(images), -1) / 255.0)


def nearest_distance(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """L2 distance in [0, 1] pixel space from each query image to its nearest reference image."""
    q, r = _pixels(query), _pixels(reference)
    out = [torch.cdist(q[i:i + CHUNK], r).min(1).values for i in range(0, len(q), CHUNK)]
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def near_copies(samples: ImageSet, train: ImageSet, test: ImageSet) -> dict[str, Any]:
    """``near_copy_rate``, ``near_copy_rate_per_class`` (None where a class has no samples), ``near_copy_threshold``."""
    thr = float(np.percentile(nearest_distance(test.images, train.images), NEAR_COPY_PERCENTILE))
    copy = nearest_distance(samples.images, train.images) <= thr
    per = [float(copy[samples.labels == c].mean()) if (samples.labels == c).any() else None
           for c in range(samples.num_classes)]
    return {"near_copy_rate": float(copy.mean()) if len(copy) else None, "near_copy_rate_per_class": per,
            "near_copy_threshold": thr}


def class_consistency(evalnet: nn.Module, samples: ImageSet, batch_size: int = 256) -> dict[str, Any]:
    """The evaluation network's top-1 on the samples' conditioning labels (pooled and per class)."""
    x, y = samples.tensors()
    hit = (predict(evalnet, x, batch_size).argmax(1) == y).numpy()
    return {"class_consistency": float(hit.mean()) if len(hit) else None,
            "class_consistency_per_class": [float(hit[samples.labels == c].mean()) if (samples.labels == c).any()
                                            else None for c in range(samples.num_classes)]}


def cas_accuracy(cas_cfg: Any, samples: ImageSet, test: ImageSet, groups: Mapping[str, Sequence[int]],
                 device: torch.device | str = "cpu") -> dict[str, Any]:
    """CAS: a classifier (``cas_cfg``: root Config or ClassifierConfig, steps already set) trained on the samples
    only, its top-1 on the real test set (all / many / medium / few)."""
    from ..classify import train_classifier
    from ..train import LocalWorld

    res = train_classifier(cas_cfg, samples, LocalWorld(device), None, progress=False)
    rep = evaluate_classifier(res.model, test, groups)
    return {"cas_acc": rep["acc_all"], **{f"cas_acc_{g}": rep[f"acc_{g}"] for g in ("many", "medium", "few")}}


def _metrics(real: Tensor, fake: Tensor, k: int) -> dict[str, float | None]:
    kk = min(k, len(real) - 1, len(fake) - 1)
    out: dict[str, float | None] = {"fid": fid(real, fake) if len(real) >= 2 and len(fake) >= 2 else None}
    if kk >= 1:
        out.update(precision_recall(real, fake, kk))
        out.update(density_coverage(real, fake, kk))
    else:
        out.update({k_: None for k_ in ("precision", "recall", "density", "coverage")})
    return out


def balanced_reference(ref_y: np.ndarray, classes: Sequence[int], generator: torch.Generator) -> np.ndarray:
    """Rows of a class-balanced reference over ``classes``: the same number (the smallest class's) from each."""
    rows = [np.where(ref_y == c)[0] for c in classes]
    m = min(len(r) for r in rows) if rows else 0
    pick = [r[torch.randperm(len(r), generator=generator)[:m].numpy()] for r in rows]
    return np.sort(np.concatenate(pick)) if pick else np.zeros(0, np.int64)


def generative_protocol(train: ImageSet, val: ImageSet, test: ImageSet, samples: ImageSet,
                        groups: Mapping[str, Sequence[int]], space: FeatureSpace, evalnet: nn.Module, *,
                        cas_cfg: Any = None, device: torch.device | str = "cpu", min_real_per_class: int = 20,
                        k: int = 5, kid_subsets: int = 100, kid_subset_size: int = 1000,
                        seed: int = 0) -> dict[str, Any]:
    """Every field of the protocol (module docstring) for ``samples`` (uint8 ImageSet with conditioning labels).
    ``cas_cfg=None`` skips CAS (``cas_acc`` None). Values that a too small set cannot give are None."""
    K = train.num_classes
    if samples.num_classes != K or len(samples) < 2:
        raise ValueError(f"samples: {len(samples)} images of {samples.num_classes} classes; the protocol needs at "
                         f"least 2 images of the data's {K} classes")
    g = torch.Generator().manual_seed(seed)
    ref_images, ref_y, ref_info = reference_set(train, val, min_real_per_class)
    fr = space(to_model_range(ref_images)).float().cpu()
    ff = space(samples.tensors()[0]).float().cpu()
    fy = samples.labels
    present = [c for c in range(K) if (fy == c).any()]
    per_class = []
    for c in range(K):
        a, b = fr[torch.from_numpy(ref_y == c)], ff[torch.from_numpy(fy == c)]
        per_class.append({"class": c, **_metrics(a, b, k), "num_real": int(len(a)), "num_fake": int(len(b))})
    rows = balanced_reference(ref_y, present, g)
    real = fr[torch.from_numpy(rows)]
    out: dict[str, Any] = _metrics(real, ff, k)
    out["kid"], out["kid_std"] = kid(real, ff, kid_subsets, kid_subset_size, g)
    kk = min(k, len(real) - 1)
    out.update(low_density_report(real, ff, kk) if kk >= 1 else {"avg_knn": None, "lof": None, "rarity": None})
    for name, cls in groups.items():
        cls = [c for c in cls if c in present]
        r_rows = rows[np.isin(ref_y[rows], cls)]
        f_rows = np.isin(fy, cls)
        out[f"fid_{name}"] = (fid(fr[torch.from_numpy(r_rows)], ff[torch.from_numpy(f_rows)])
                              if len(r_rows) >= 2 and f_rows.sum() >= 2 else None)
    out["per_class"] = [{k_: e[k_] for k_ in ("class", *PER_CLASS_KEYS, "num_real", "num_fake")} for e in per_class]
    vals = [e["fid"] for e in per_class if e["fid"] is not None]
    out["mean_class_fid"] = float(np.mean(vals)) if vals else None
    out.update(class_consistency(evalnet, samples))
    out.update(near_copies(samples, train, test))
    out.update(cas_accuracy(cas_cfg, samples, test, groups, device) if cas_cfg is not None else
               {"cas_acc": None, **{f"cas_acc_{gname}": None for gname in ("many", "medium", "few")}})
    out.update(ref_info)
    out.update({"num_fake": int(len(samples)), "num_real_pooled": int(len(rows)), "classes_sampled": present})
    return out


def cas_config(cfg: Any) -> Any:
    """The root config with ``classifier`` set up for CAS (``eval.cas_steps`` steps of cross-entropy on the samples
    only); None when ``eval.cas_steps`` is 0."""
    if not cfg.eval.cas_steps:
        return None
    c = replace(cfg.classifier, steps=cfg.eval.cas_steps, epochs=0.0, method="ce", checkpoint="", synthetic_uri="",
                ckpt_every=0)
    return replace(cfg, classifier=c)


__all__ = ["generative_protocol", "reference_set", "reference_indices", "near_copies", "nearest_distance",
           "class_consistency", "cas_accuracy", "cas_config", "balanced_reference", "SCALAR_KEYS", "PER_CLASS_KEYS"]
