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


MIN_CELL_PX = 64   # grids are upscaled (nearest) until one image is at least this many pixels wide


def save_grid_png(images: np.ndarray, path: str, nrow: int, scale: int = 1,
                  row_labels: "list[str] | tuple[str, ...] | None" = None, min_cell: int = MIN_CELL_PX) -> str:
    """A class-major grid PNG: ``nrow`` images per row, one class per row, each row labelled on the left
    (``row_labels``; default ``class 0``, ``class 1``, ... by row), upscaled by at least ``scale`` and until a
    cell is ``min_cell`` pixels."""
    from PIL import Image, ImageDraw, ImageFont

    g = make_grid(images, nrow)
    h = images.shape[1] if len(images) else 1
    scale = max(scale, math.ceil(min_cell / max(h, 1)))
    if scale > 1:
        g = g.repeat(scale, 0).repeat(scale, 1)
    img = Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g).convert("RGB")
    rows = max(1, math.ceil(len(images) / nrow))
    labels = list(row_labels) if row_labels is not None else [f"class {r}" for r in range(rows)]
    font = ImageFont.load_default()
    margin = 8 + max((int(ImageDraw.Draw(img).textlength(str(t), font=font)) for t in labels), default=0)
    out = Image.new("RGB", (img.width + margin, img.height), (255, 255, 255))
    out.paste(img, (margin, 0))
    draw = ImageDraw.Draw(out)
    cell = (h + 1) * scale
    for r, text in enumerate(labels[:rows]):
        draw.text((4, scale + r * cell + cell // 2 - 6), str(text), fill=(0, 0, 0), font=font)
    out.save(path)
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
    from .guidance import wants_classifier  # distance=classifier, or auto with classifier.checkpoint
    return cfg.loss.aid > 0 or wants_classifier(cfg.guidance.minority, bool(cfg.classifier.checkpoint))
