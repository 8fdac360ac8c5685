"""Generative metrics in a pluggable feature space (features ``[N, D]`` in, numbers out).

- FID: Heusel et al., "GANs Trained by a Two Time-Scale Update Rule ...", NeurIPS 2017.
- KID: Binkowski et al., "Demystifying MMD GANs", ICLR 2018 (unbiased MMD^2, kernel (x.y/d + 1)^3).
- Precision / recall: Kynkaanniemi et al., "Improved Precision and Recall Metric ...", NeurIPS 2019.
- Density / coverage: Naeem et al., "Reliable Fidelity and Diversity Metrics ...", ICML 2020.
- Per-class FID and group FID (many / medium / few): the class-imbalanced diffusion literature (CBDM, CCUA).

FID is strongly biased at small N: compare values only at equal N (or use KID).
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from scipy import linalg
from torch import Tensor

Array = np.ndarray | Tensor
CHUNK = 4096  # rows per cdist block


def _np(a: Array) -> np.ndarray:
    return a.detach().cpu().double().numpy() if isinstance(a, Tensor) else np.asarray(a, dtype=np.float64)


def _t(a: Array) -> Tensor:
    return a.detach().float() if isinstance(a, Tensor) else torch.from_numpy(np.asarray(a, dtype=np.float32))


def gaussian_stats(feats: Array) -> tuple[np.ndarray, np.ndarray]:  # [N,D] -> mu [D], sigma [D,D]
    f = _np(feats)
    if len(f) < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {len(f)}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})`` (pytorch-fid's numerics)."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    s1, s2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    with warnings.catch_warnings():   # singular covariances are normal when N <= D (small classes)
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
    if not np.isfinite(covmean).all():
        off = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + off).dot(s2 + off))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(max(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean), 0.0))


def fid(real: Array, fake: Array) -> float:
    """FID between two feature sets ``[N, D]``, ``[M, D]``."""
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))


def kid(real: Array, fake: Array, subsets: int = 100, subset_size: int = 1000,
        generator: torch.Generator | None = None) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 with the cubic polynomial kernel over random subsets."""
    r, f = _np(real), _np(fake)
    m = min(subset_size, len(r), len(f))
    if m < 2:
        raise ValueError("KID needs at least 2 samples per set")
    d = r.shape[1]
    vals = []
    for _ in range(subsets):
        x = r[torch.randperm(len(r), generator=generator)[:m].numpy()]
        y = f[torch.randperm(len(f), generator=generator)[:m].numpy()]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        a = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        vals.append(a - 2.0 * kxy.mean())
    return float(np.mean(vals)), float(np.std(vals))


# ----------------------------------------------------------------------------- k-NN manifolds


def kth_nn_distance(feats: Array, k: int) -> Tensor:  # [N,D] -> [N] distance to the k-th nearest other point
    f = _t(feats)
    if len(f) <= k:
        raise ValueError(f"need more than k={k} points, got {len(f)}")
    out = []
    for i in range(0, len(f), CHUNK):
        d = torch.cdist(f[i:i + CHUNK], f)
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])  # column 0 is the point itself
    return torch.cat(out)


def _ball_counts(points: Array, centers: Array, radii: Tensor) -> tuple[Tensor, Tensor]:
    """For each point: how many balls ``B(center_i, r_i)`` contain it; for each ball: whether any point does."""
    p, c = _t(points), _t(centers)
    count = torch.zeros(len(p), dtype=torch.long)
    hit = torch.zeros(len(c), dtype=torch.bool)
    for i in range(0, len(p), CHUNK):
        inside = torch.cdist(p[i:i + CHUNK], c) <= radii[None, :]
        count[i:i + CHUNK] = inside.sum(1)
        hit |= inside.any(0)
    return count, hit


def precision_recall(real: Array, fake: Array, k: int = 3) -> dict[str, float]:
    """Precision = share of fake inside the real k-NN manifold; recall = share of real inside the fake one."""
    r_real, r_fake = kth_nn_distance(real, k), kth_nn_distance(fake, k)
    in_real, _ = _ball_counts(fake, real, r_real)
    in_fake, _ = _ball_counts(real, fake, r_fake)
    return {"precision": float((in_real > 0).float().mean()), "recall": float((in_fake > 0).float().mean())}


def density_coverage(real: Array, fake: Array, k: int = 5) -> dict[str, float]:
    """Density = ``(1/kM) sum_j #{i : fake_j in B(real_i, r_i)}``; coverage = share of real balls with a fake inside."""
    r_real = kth_nn_distance(real, k)
    count, hit = _ball_counts(fake, real, r_real)
    return {"density": float(count.float().sum() / (k * len(count))), "coverage": float(hit.float().mean())}


# ----------------------------------------------------------------------------- per class / group


def per_class_fid(real: Array, real_y: Array, fake: Array, fake_y: Array, num_classes: int) -> list[float | None]:
    """FID of class-c fakes against class-c reals; None where a side has fewer than 2 samples."""
    r, f = _np(real), _np(fake)
    ry, fy = np.asarray(_np(real_y), np.int64), np.asarray(_np(fake_y), np.int64)
    out: list[float | None] = []
    for c in range(num_classes):
        a, b = r[ry == c], f[fy == c]
        out.append(fid(a, b) if len(a) >= 2 and len(b) >= 2 else None)
    return out


def group_fid(real: Array, real_y: Array, fake: Array, fake_y: Array, classes: Sequence[int]) -> float | None:
    """FID of the pooled group (e.g. the few / tail classes); None if a side has fewer than 2 samples."""
    r, f = _np(real), _np(fake)
    ry, fy = np.asarray(_np(real_y), np.int64), np.asarray(_np(fake_y), np.int64)
    cls = np.asarray(list(classes), np.int64)
    a, b = r[np.isin(ry, cls)], f[np.isin(fy, cls)]
    return fid(a, b) if len(a) >= 2 and len(b) >= 2 else None


def generative_report(real: Array, real_y: Array, fake: Array, fake_y: Array, num_classes: int,
                      groups: Mapping[str, Sequence[int]], k: int = 5, kid_subsets: int = 100,
                      kid_subset_size: int = 1000, generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every generative metric of this module in one dict (features already extracted)."""
    out: dict[str, Any] = {"fid": fid(real, fake)}
    out["kid"], out["kid_std"] = kid(real, fake, kid_subsets, kid_subset_size, generator)
    kk = min(k, len(real) - 1, len(fake) - 1)
    if kk >= 1:
        out.update(precision_recall(real, fake, kk))
        out.update(density_coverage(real, fake, kk))
    pc = per_class_fid(real, real_y, fake, fake_y, num_classes)
    out["per_class_fid"] = pc
    vals = [v for v in pc if v is not None]
    out["mean_class_fid"] = float(np.mean(vals)) if vals else None
    for g, cls in groups.items():
        out[f"fid_{g}"] = group_fid(real, real_y, fake, fake_y, cls) if cls else None
    return out
