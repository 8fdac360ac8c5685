"""Low-density ("minority") metrics of generated samples with respect to the real set.

- AvgkNN: mean distance to the k nearest real neighbours (Sehwag et al., "Generating High Fidelity Data
  from Low-density Regions using Diffusion Models", CVPR 2022; Um & Ye, ICLR 2024 / ECCV 2024).
- LOF: Breunig et al., "LOF: Identifying Density-Based Local Outliers", SIGMOD 2000 (scikit-learn's
  ``LocalOutlierFactor`` in novelty mode, fitted on the real set).
- Rarity Score: Han et al., "Rarity Score: A New Metric to Evaluate the Uncommonness of Synthesized
  Images", ICLR 2023: ``min{ r_k(real_i) : fake in B(real_i, r_k(real_i)) }``; NaN off the manifold.
"""
from __future__ import annotations

import numpy as np
import torch

from .generative import CHUNK, Array, _np, _t, kth_nn_distance


def avg_knn(real: Array, fake: Array, k: int = 5) -> np.ndarray:  # -> [M]
    """Mean distance of each fake to its k nearest real features (higher = more minority)."""
    r, f = _t(real), _t(fake)
    out = []
    for i in range(0, len(f), CHUNK):
        out.append(torch.cdist(f[i:i + CHUNK], r).topk(k, dim=1, largest=False).values.mean(1))
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def lof(real: Array, fake: Array, k: int = 5) -> np.ndarray:  # -> [M]
    """Local outlier factor of each fake w.r.t. the real set (about 1 inside, >> 1 for outliers)."""
    from sklearn.neighbors import LocalOutlierFactor

    est = LocalOutlierFactor(n_neighbors=k, novelty=True).fit(_np(real))
    return -est.score_samples(_np(fake))


def rarity_score(real: Array, fake: Array, k: int = 5) -> np.ndarray:  # -> [M], NaN where off-manifold
    """Smallest k-NN radius among the real balls containing each fake (higher = rarer)."""
    r, f = _t(real), _t(fake)
    radii = kth_nn_distance(r, k)
    out = []
    for i in range(0, len(f), CHUNK):
        d = torch.cdist(f[i:i + CHUNK], r)
        masked = torch.where(d <= radii[None, :], radii[None, :].expand_as(d), torch.full_like(d, float("inf")))
        out.append(masked.min(1).values)
    s = torch.cat(out).double().numpy() if out else np.zeros(0)
    s[~np.isfinite(s)] = np.nan
    return s


def low_density_report(real: Array, fake: Array, k: int = 5) -> dict[str, float | None]:
    """Means of AvgkNN, LOF and rarity (rarity over on-manifold fakes) plus the on-manifold share."""
    rs = rarity_score(real, fake, k)
    on = np.isfinite(rs)
    return {"avg_knn": float(np.mean(avg_knn(real, fake, k))), "lof": float(np.mean(lof(real, fake, k))),
            "rarity": float(np.mean(rs[on])) if on.any() else None, "rarity_on_manifold": float(on.mean())}
