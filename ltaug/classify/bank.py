"""Feature bank and DiffuLT's ID / AID / OOD categories.

DiffuLT (Shao et al., "DiffuLT: Diffusion for Long-tail Recognition Without External Knowledge",
NeurIPS 2024, §3): class centres ``mu_c = mean_{x in D_c} phi(x)`` of the baseline classifier's
penultimate features on the real training images, and a per-class threshold ``d_f(c)``. A generated
``x~`` with condition c and ``d = ||phi(x~) - mu_c||_2`` is ID if ``d <= d_f``, AID if
``d_f < d <= 2 d_f``, OOD beyond. ``d_f`` is [GAP] in our sources: the default is the largest distance
of a real class-c image to ``mu_c`` (every real image is ID); a quantile is the option.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

CATEGORIES = ("id", "aid", "ood")  # category codes 0, 1, 2
AID_FACTOR = 2.0  # AID band: d_f < d <= 2 d_f (DiffuLT)


@dataclass(frozen=True)
class FeatureBank:
    """Class centres ``[C, D]`` and radii ``d_f`` ``[C]`` (plus the real counts ``[C]``)."""

    centers: Tensor
    radii: Tensor
    counts: Tensor | None = None

    def __post_init__(self) -> None:
        if self.centers.ndim != 2 or self.radii.shape != (self.centers.shape[0],):
            raise ValueError(f"FeatureBank: centers must be [C,D] and radii [C], got "
                             f"{tuple(self.centers.shape)} and {tuple(self.radii.shape)}")

    @property
    def num_classes(self) -> int:
        return int(self.centers.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centers.shape[1])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "FeatureBank":
        return FeatureBank(self.centers.to(device=device, dtype=dtype), self.radii.to(device=device, dtype=dtype),
                           None if self.counts is None else self.counts.to(device=device))

    def state_dict(self) -> dict[str, Tensor]:
        d = {"centers": self.centers.detach().cpu(), "radii": self.radii.detach().cpu()}
        if self.counts is not None:
            d["counts"] = self.counts.detach().cpu()
        return d

    @staticmethod
    def from_state_dict(d: dict[str, Tensor]) -> "FeatureBank":
        return FeatureBank(d["centers"], d["radii"], d.get("counts"))

    def distances(self, phi: Tensor, y: Tensor) -> Tensor:  # phi [B,D], y [B] -> d [B]
        """``d = ||phi(x) - mu_y||_2``."""
        mu = self.centers.to(phi)[y.to(phi.device).long()]
        return (phi - mu).norm(dim=1)

    def categorize(self, phi: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:  # -> d [B], category [B] int64
        d = self.distances(phi, y)
        return d, categorize(d, self.radii.to(d)[y.to(d.device).long()])


def categorize(d: Tensor, d_f: Tensor) -> Tensor:  # d [B], d_f [B] -> category codes [B] (0 id, 1 aid, 2 ood)
    """ID if ``d <= d_f``, AID if ``d <= 2 d_f``, OOD beyond."""
    cat = torch.full(d.shape, 2, dtype=torch.long, device=d.device)
    cat[d <= AID_FACTOR * d_f] = 1
    cat[d <= d_f] = 0
    return cat


def keep_mask(categories: Tensor, keep: Sequence[str]) -> Tensor:  # [B] -> bool [B]
    bad = [k for k in keep if k not in CATEGORIES]
    if bad:
        raise ValueError(f"filter.keep: unknown categories {bad}; choose from {list(CATEGORIES)}")
    codes = torch.tensor([CATEGORIES.index(k) for k in keep], dtype=torch.long, device=categories.device)
    return torch.isin(categories, codes)


def shares(categories: Tensor | np.ndarray) -> dict[str, float]:
    """Share of ID / AID / OOD among the given category codes."""
    c = torch.as_tensor(np.asarray(categories)).long().reshape(-1)
    n = max(int(c.numel()), 1)
    return {name: float((c == i).sum()) / n for i, name in enumerate(CATEGORIES)}


@torch.no_grad()
def extract_features(model: nn.Module, x: Tensor, batch_size: int = 256,
                     device: torch.device | str | None = None) -> Tensor:  # x [N,C,H,W] in [-1,1] -> [N,D]
    """Penultimate features in eval mode, batched; on ``device`` (default: the model's), returned on x's device."""
    was_training = model.training
    model.eval()
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    out = [model.features(x[i:i + batch_size].to(dev)).float() for i in range(0, len(x), batch_size)]
    model.train(was_training)
    if not out:
        return torch.zeros(0, getattr(model, "feature_dim", 0), device=x.device)
    return torch.cat(out).to(x.device)


def build_bank(phi: Tensor, y: Tensor, num_classes: int, radius: str = "max",
               quantile: float = 0.95) -> FeatureBank:  # phi [N,D], y [N]
    """Centres and radii from real features. ``radius``: ``max`` distance or a ``quantile`` of distances.

    A class without real images gets centre 0 and radius 0 (everything generated for it is OOD).
    """
    if radius not in ("max", "quantile"):
        raise ValueError(f"radius {radius!r}; choose max or quantile")
    phi = phi.float()
    y = y.to(phi.device).long()
    centers = torch.zeros(num_classes, phi.shape[1], device=phi.device)
    radii = torch.zeros(num_classes, device=phi.device)
    counts = torch.bincount(y, minlength=num_classes)
    for c in range(num_classes):
        f = phi[y == c]
        if len(f) == 0:
            continue
        centers[c] = f.mean(0)
        d = (f - centers[c]).norm(dim=1)
        radii[c] = d.max() if radius == "max" else torch.quantile(d, quantile)
    return FeatureBank(centers, radii, counts)
