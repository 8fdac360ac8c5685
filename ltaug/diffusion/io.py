"""Edges of the diffusion core used by jobs: image grids as PNG, the classifier feature space (lazy import)."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .losses import SimpleFeatureSpace


def make_grid(images: np.ndarray, nrow: int, pad: int = 1) -> np.ndarray:
    """uint8 [N,H,W,C] -> one uint8 [H',W',C] image, ``nrow`` images per row."""
    n, h, w, c = images.shape
    rows = max(1, math.ceil(n / nrow))
    out = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, nrow)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = images[k]
    return out


def save_grid_png(images: np.ndarray, path: str, nrow: int, scale: int = 1) -> str:
    from PIL import Image

    g = make_grid(images, nrow)
    if scale > 1:
        g = g.repeat(scale, 0).repeat(scale, 1)
    Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g).save(path)
    return path


def classifier_feature_space(uri: str, device: str | torch.device = "cpu") -> SimpleFeatureSpace:
    """The frozen classifier's features + feature bank (DiffuLT AID loss, minority ``classifier`` distance)."""
    if not uri:
        raise ValueError("classifier.checkpoint is required for loss.aid > 0 or guidance.minority.distance=classifier")
    from ..classify import load_classifier  # lazy: only when a classifier is configured

    model, bank = load_classifier(uri, device)
    for p in model.parameters():
        p.requires_grad_(False)
    if bank is None:
        raise ValueError(f"{uri}: the classifier checkpoint has no feature bank (an unfinished run?)")

    def extractor(x: Tensor) -> Tensor:
        return model.features(x)

    return SimpleFeatureSpace(extractor, bank.centers.to(device), bank.radii.to(device))


def needs_classifier(cfg) -> bool:
    return cfg.loss.aid > 0 or (cfg.guidance.minority.scale > 0 and cfg.guidance.minority.distance == "classifier")
