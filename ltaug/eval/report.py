"""One call for generated images: features in the configured space, then every generative and
low-density metric (and the ID/AID/OOD shares when a feature bank is given)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ..classify.bank import FeatureBank, shares
from .features import FeatureSpace
from .generative import generative_report
from .lowdensity import low_density_report


def evaluate_generated(space: FeatureSpace, real_x: Tensor, real_y: Tensor, fake_x: Tensor, fake_y: Tensor,
                       num_classes: int, groups: Mapping[str, Sequence[int]], k: int = 5, kid_subsets: int = 100,
                       kid_subset_size: int = 1000, generator: torch.Generator | None = None,
                       bank: FeatureBank | None = None, bank_space: FeatureSpace | None = None) -> dict[str, Any]:
    """Images ``[N,C,H,W]`` in [-1, 1] with labels. FID / KID / precision / recall / density / coverage /
    per-class and group FID against ``real_x`` (state which reference you pass: a balanced set keeps
    numbers comparable), AvgkNN / LOF / rarity of the fakes w.r.t. the reals, and with ``bank`` the
    ID / AID / OOD shares (features from ``bank_space``, default ``space``: the bank's classifier)."""
    fr, ff = space(real_x).float().cpu(), space(fake_x).float().cpu()
    out = generative_report(fr, real_y.cpu(), ff, fake_y.cpu(), num_classes, groups, k, kid_subsets,
                            kid_subset_size, generator)
    kk = min(k, len(fr) - 1)
    if kk >= 1 and len(ff):
        out.update(low_density_report(fr, ff, kk))
    if bank is not None:
        phi = (bank_space or space)(fake_x).float()
        _, cat = bank.to(phi.device).categorize(phi, fake_y.to(phi.device))
        out["id_aid_ood"] = shares(cat)
    out["num_real"], out["num_fake"] = int(len(fr)), int(len(ff))
    return out
