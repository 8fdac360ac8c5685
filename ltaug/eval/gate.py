"""The quality gate of minority guidance: how far the guidance scale can go before samples stop being real.

For each ``guidance.minority.scale`` of a sweep (unguided, scale 0, always included) the same class-uniform samples
(same seeds) are scored against the **validation** images, never test, in the evaluation feature space:

- the low-density metrics the guidance is meant to raise: ``avg_knn``, ``lof``, ``rarity``;
- what must not fall: ``precision`` (Kynkäänniemi et al.) against a class-balanced validation reference, and
  ``class_consistency`` (the evaluation network's accuracy on the conditioning labels).

:func:`choose_scale` returns the largest scale whose class consistency stays within ``cc_points`` (absolute, 0.02
= 2 points) and whose precision stays within ``precision_rel`` (relative, 0.10 = 10 %) of unguided: the rule a
preset's ``guidance.minority.scale`` is chosen by. Pure torch/numpy; the stage (``ltaug/stages/evaluate.py``,
``eval.minority_scales``) draws the samples, :func:`ltaug.eval.plots.minority_gate_plot` draws the picture.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..data.types import ImageSet, to_model_range
from .generative import precision_recall
from .lowdensity import low_density_report
from .protocol import balanced_reference, class_consistency

GATE_CC_POINTS = 0.02      # class consistency may drop by at most 2 points (absolute)
GATE_PRECISION_REL = 0.10  # precision may drop by at most 10 % of unguided
GATE_KEYS = ("precision", "class_consistency", "avg_knn", "lof", "rarity")


def gate_metrics(val: ImageSet, samples: ImageSet, space: Any, evalnet: nn.Module, k: int = 5,
                 seed: int = 0) -> dict[str, float | None]:
    """The gate's fields for one scale: ``samples`` against the class-balanced validation images."""
    present = [c for c in range(samples.num_classes) if (samples.labels == c).any()]
    rows = balanced_reference(np.asarray(val.labels), present, torch.Generator().manual_seed(seed))
    if len(rows) < 2:
        raise ValueError("data.val_per_class: the quality gate needs validation images of the sampled classes "
                         f"(found {len(rows)})")
    real = space(to_model_range(np.asarray(val.images)[rows])).float().cpu()
    fake = space(samples.tensors()[0]).float().cpu()
    kk = max(1, min(k, len(real) - 1, len(fake) - 1))
    out: dict[str, float | None] = {"precision": precision_recall(real, fake, kk)["precision"]}
    out["class_consistency"] = class_consistency(evalnet, samples)["class_consistency"]
    out.update({key: low_density_report(real, fake, kk)[key] for key in ("avg_knn", "lof", "rarity")})
    out["num_real"] = int(len(rows))
    return out


def choose_scale(rows: Sequence[dict[str, Any]], cc_points: float = GATE_CC_POINTS,
                 precision_rel: float = GATE_PRECISION_REL) -> dict[str, Any]:
    """The largest scale that passes the gate; ``rows`` are ``{"scale", "precision", "class_consistency", ...}``
    with one row at scale 0 (the unguided reference). Each row gains ``passes``."""
    ref = [r for r in rows if r["scale"] == 0]
    if not ref:
        raise ValueError("the quality gate needs the unguided row (scale 0)")
    p0, c0 = ref[0]["precision"], ref[0]["class_consistency"]
    cc_floor, p_floor = c0 - cc_points, p0 * (1 - precision_rel)
    chosen = 0.0
    for r in sorted(rows, key=lambda r: r["scale"]):
        r["passes"] = bool(r["class_consistency"] >= cc_floor - 1e-12 and r["precision"] >= p_floor - 1e-12)
        if r["passes"]:
            chosen = max(chosen, float(r["scale"]))
    return {"chosen_scale": chosen, "class_consistency_floor": cc_floor, "precision_floor": p_floor,
            "rule": f"largest scale with class consistency >= unguided - {cc_points:g} and precision >= "
                    f"(1 - {precision_rel:g}) x unguided, on the validation split",
            "rows": sorted(rows, key=lambda r: r["scale"])}


__all__ = ["gate_metrics", "choose_scale", "GATE_KEYS", "GATE_CC_POINTS", "GATE_PRECISION_REL"]
