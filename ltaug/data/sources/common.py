"""Shared helpers of the sources: resizing, channel handling, bad-record policy, missing-file errors."""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
import torch.nn.functional as F

from ...config import DataConfig
from ..types import ImageSet

log = logging.getLogger("ltaug.data")


class DataError(ValueError):
    """Bad or missing input data; the message names the file and the record."""


def _limit(name: str, default: int) -> int:
    """A cap on what one input may make ltaug allocate; overridable by the environment (``LTAUG_<NAME>``)."""
    raw = os.environ.get(f"LTAUG_{name}")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise DataError(f"LTAUG_{name}={raw!r}: expected an integer") from None


# Caps (a tiny hostile file must not make ltaug allocate gigabytes). ``LTAUG_<NAME>`` overrides each.
MAX_CLASSES = _limit("MAX_CLASSES", 100_000)                 # ImageNet-21k has ~21k classes
MAX_IMAGE_FILE_BYTES = _limit("MAX_IMAGE_FILE_BYTES", 256 << 20)
MAX_IMAGE_PIXELS = _limit("MAX_IMAGE_PIXELS", 64 << 20)      # decoded pixels of one image (8k x 8k)
MAX_DECODED_BYTES = _limit("MAX_DECODED_BYTES", 2 << 30)     # one decompressed / decoded data file
MAX_INFLATE_RATIO = _limit("MAX_INFLATE_RATIO", 200)          # real image data compresses ~2-10x; bombs ~1000x
MAX_LIST_BYTES = _limit("MAX_LIST_BYTES", 1 << 30)           # a list file / label file read whole
MAX_MEMBER_BYTES = _limit("MAX_MEMBER_BYTES", 256 << 20)     # one member of a shard tar


def check_num_classes(n: int, where: str) -> int:
    """``n`` classes are plausible (<= MAX_CLASSES); else an error naming ``where``."""
    if n > MAX_CLASSES:
        raise DataError(f"{where}: {n} classes (largest label {n - 1}); more than the {MAX_CLASSES} allowed. A label "
                        f"is wrong, or set data.num_classes / LTAUG_MAX_CLASSES if the dataset really has that many")
    return n


def integer_labels(raw: object, where: str) -> np.ndarray:
    """Labels as int64, refusing what is not an integer (float 3.7 would truncate to 3, bools, strings)."""
    arr = np.asarray(raw)
    if arr.ndim != 1:
        raise DataError(f"{where}: labels have shape {arr.shape}; expected a flat list")
    if arr.dtype.kind not in "iu" or arr.dtype == np.bool_:
        bad = next((i for i, v in enumerate(arr.tolist())
                    if isinstance(v, bool) or not isinstance(v, (int, np.integer))), 0)
        raise DataError(f"{where}: labels have dtype {arr.dtype} (record {bad}: {arr.tolist()[bad]!r}); expected "
                        f"integers 0..C-1")
    if arr.dtype.kind == "u" and arr.dtype.itemsize >= 8 and arr.size and int(arr.max()) >= 2 ** 63:
        raise DataError(f"{where}: label {int(arr.max())} overflows int64")
    return arr.astype(np.int64)


def uint8_pixels(raw: np.ndarray, where: str) -> np.ndarray:
    """Pixels as uint8, refusing floats (a [0,1) image read as 0..255 is black) and values outside 0..255
    (a cast would wrap them)."""
    arr = np.asarray(raw)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind not in "iu" or arr.dtype == np.bool_:
        raise DataError(f"{where}: pixels have dtype {arr.dtype}; expected uint8 0..255 (convert float images: "
                        f"round(x * 255) for values in [0, 1])")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            i = int(np.flatnonzero((arr.reshape(-1) < 0) | (arr.reshape(-1) > 255))[0])
            raise DataError(f"{where}: pixel values {lo}..{hi} (element {i}) outside 0..255; expected uint8")
    return arr.astype(np.uint8)


def is_hidden(name: str) -> bool:
    """Names a data reader never takes as data: hidden (``.ipynb_checkpoints``, ``.DS_Store``, ``._x.png``),
    ``__MACOSX`` and the like."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return base.startswith((".", "__")) or base in ("Thumbs.db", "desktop.ini")


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
    check_num_classes(num_classes, source)
    imgs = resize(uint8_pixels(images, source), cfg.image_size, cfg.channels)
    names = class_names or tuple(str(c) for c in range(num_classes))
    return ImageSet(imgs, labels, num_classes, names, source, skipped)


def bad_record(cfg: DataConfig, message: str, counter: list[int]) -> None:
    """Raise (on_bad_record=error) or count and log a skip."""
    if cfg.on_bad_record == "error":
        raise DataError(message + " (set data.on_bad_record=skip to skip and count such records)")
    counter[0] += 1
    log.warning("skipping: %s", message)
