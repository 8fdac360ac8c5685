"""Filter stage of generation: DiffuLT's ID / AID / OOD categories (Shao et al., NeurIPS 2024, §3).

``FilterStage(spec)(batch) -> batch`` adds ``category`` (``id`` / ``aid`` / ``ood``, or ``none`` without a
classifier), ``distance`` (to the class centre in the baseline classifier's feature space), ``keep`` and
``reason`` (why a row is dropped; empty when kept). It never drops rows itself: the writer records the
dropped rows in the shard's stats, so every planned id is accounted for (kept in a shard, or dropped with
a reason). Pure: no files, no logs.

It splits in two for the Ray pipeline: :meth:`FilterStage.measure` (the classifier: features, distance to the
class centre, category; in the sampler actor, on its device) and :func:`decide_keep` (the cheap keep / reason
decision from the categories; in the CPU encode stage). ``FilterStage(spec)(batch)`` runs both.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CATEGORY_NAMES = ("id", "aid", "ood")


@dataclass(frozen=True)
class FilterSpec:
    """Runtime values of the filter (no defaults of its own: ``from_config`` reads ``filter.keep`` and
    ``classifier.eval_batch_size``; the classifier file and the device are resolved by the caller)."""

    classifier: str                            # classifier checkpoint file (with feature bank); "" = keep everything
    keep: tuple[str, ...]                      # filter.keep (DiffuLT default: id, aid — drop OOD)
    device: str                                # from ltaug.train.resolve_device
    batch_size: int

    @staticmethod
    def from_config(cfg, classifier: str, device: str) -> "FilterSpec":
        return FilterSpec(classifier, tuple(cfg.filter.keep), str(device), cfg.classifier.eval_batch_size)

    def settings(self) -> dict:
        """What decides kept / dropped (the classifier's weights are named by digest in the plan)."""
        return {"keep": list(self.keep) if self.classifier else ["*"]}


class FilterStage:
    def __init__(self, spec: FilterSpec) -> None:
        import torch

        self.spec = spec
        self.filter = None
        if spec.classifier:
            from ..classify import IdAidOodFilter, load_classifier

            device = torch.device(spec.device)
            model, bank = load_classifier(spec.classifier, device)
            if bank is None:
                raise ValueError(f"{spec.classifier}: the classifier checkpoint has no feature bank "
                                 f"(an intermediate checkpoint?); use the final one of train_classifier")
            self.filter = IdAidOodFilter(model, bank, keep=spec.keep, drop=False, batch_size=spec.batch_size,
                                         device=device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.measure(batch)
        if "keep" not in out:
            out.update(decide_keep(out["category"], self.spec.keep))
        return out

    def decision_keep(self) -> tuple[str, ...]:
        """The categories :func:`decide_keep` keeps (``filter.keep``)."""
        return tuple(self.spec.keep)

    def measure(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Adds ``category`` and ``distance`` (the model part); without a classifier also ``keep`` / ``reason``
        (everything kept: nothing is left to decide)."""
        n = len(batch["label"])
        out = dict(batch)
        if self.filter is None or n == 0:
            out["category"] = np.array(["none"] * n, dtype=object)
            out["distance"] = np.full(n, np.nan, np.float32)
            out["keep"] = np.ones(n, bool)
            out["reason"] = np.array([""] * n, dtype=object)
            return out
        r = self.filter(out)
        out["category"] = np.array([CATEGORY_NAMES[int(c)] for c in r["category"]], dtype=object)
        out["distance"] = np.asarray(r["distance"], np.float32)
        return out


def decide_keep(categories, keep) -> dict[str, np.ndarray]:
    """``{"keep", "reason"}`` of rows by category name: kept when the category is in ``keep`` (``filter.keep``;
    what ``IdAidOodFilter``'s keep mask computes), else the reason names the category and the key."""
    cats = np.asarray(categories, dtype=object)
    keep = tuple(keep)
    mask = np.array([str(c) in keep for c in cats], dtype=bool)
    why = f"filter.keep={'+'.join(keep)}"
    return {"keep": mask, "reason": np.array(["" if k else f"{c} ({why})" for k, c in zip(mask, cats)], dtype=object)}


__all__ = ["FilterStage", "FilterSpec", "CATEGORY_NAMES", "decide_keep"]
