"""Shared helpers of the sources: resizing, channel handling, bad-record policy, missing-file errors."""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from ...config import DataConfig
from ..types import ImageSet

log = logging.getLogger("ltaug.data")


class DataError(ValueError):
    """Bad or missing input data; the message names the file and the record."""


def missing(source: str, root: str, expected: list[str]) -> DataError:
    return DataError(f"{source}: dataset not found under {root!r}; expected files: {expected}. "
                     f"ltaug never downloads data: place the files there (local path or s3:// URI) "
                     f"and set data.root")


def resize(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8 [N,H,W,C] -> uint8 [N,size,size,channels'] (antialiased bilinear; gray <-> colour)."""
    if images.ndim == 3:
        images = images[..., None]
    if channels == 1 and images.shape[-1] == 3:
        w = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        images = np.clip(np.round(images.astype(np.float32) @ w), 0, 255).astype(np.uint8)[..., None]
    elif channels == 3 and images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    if images.shape[1] == size and images.shape[2] == size:
        return np.ascontiguousarray(images)
    out = np.empty((len(images), size, size, images.shape[-1]), dtype=np.uint8)
    for i in range(0, len(images), 4096):
        x = torch.from_numpy(np.array(images[i:i + 4096], copy=True)).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i:i + 4096] = y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    bad = np.where((labels < 0) | (labels >= num_classes))[0]
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{where}: record {i} has label {int(labels[i])}, outside 0..{num_classes - 1} "
                        f"({len(bad)} such records)")


def finish(cfg: DataConfig, images: np.ndarray, labels: np.ndarray, num_classes: int, source: str,
           class_names: tuple[str, ...] = (), skipped: int = 0) -> ImageSet:
    labels = np.asarray(labels, dtype=np.int64)
    bad = np.where((labels < 0) | (labels >= num_classes))[0]
    if len(bad):
        counter = [skipped]
        for i in bad:
            bad_record(cfg, f"{source}: record {int(i)} has label {int(labels[i])}, outside 0..{num_classes - 1}",
                       counter)
        keep = np.ones(len(labels), dtype=bool)
        keep[bad] = False
        images, labels, skipped = images[keep], labels[keep], counter[0]
    if skipped:
        log.warning("%s: skipped %d bad record(s) (data.on_bad_record=skip)", source, skipped)
    imgs = resize(images, cfg.image_size, cfg.channels)
    names = class_names or tuple(str(c) for c in range(num_classes))
    return ImageSet(imgs, labels, num_classes, names, source, skipped)


def bad_record(cfg: DataConfig, message: str, counter: list[int]) -> None:
    """Raise (on_bad_record=error) or count and log a skip."""
    if cfg.on_bad_record == "error":
        raise DataError(message + " (set data.on_bad_record=skip to skip and count such records)")
    counter[0] += 1
    log.warning("skipping: %s", message)
