"""MNIST / Fashion-MNIST IDX files (LeCun et al. 1998; Xiao et al. 2017), raw or ``.gz``, via fsspec.

Looks in ``data.root``, ``root/raw`` and ``root/<MNIST|FashionMNIST>/raw`` (torchvision's layout).
The magic number, dimensions and file length are checked; a mismatch names the file.
"""
from __future__ import annotations

import math
import struct
import zlib

import numpy as np

from ... import storage
from ...config import DataConfig
from ..types import ImageSet
from .common import MAX_DECODED_BYTES, MAX_INFLATE_RATIO, DataError, finish, missing

IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SUBDIRS = {"mnist": ("", "raw", "MNIST/raw"), "fashion_mnist": ("", "raw", "FashionMNIST/raw")}
FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _locate(cfg: DataConfig, name: str) -> str | None:
    for sub in SUBDIRS[cfg.source]:
        base = storage.join(cfg.root, sub) if sub else cfg.root
        for candidate in (name, name + ".gz"):
            uri = storage.join(base, candidate)
            if storage.exists(uri):
                return uri
    return None


def _gunzip(raw: bytes, uri: str, cap: int) -> bytes:
    """Inflate a gzip file, stopping at ``cap`` bytes (a 2 MB ``.gz`` may inflate to gigabytes)."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    cap = min(cap, max(16 << 20, MAX_INFLATE_RATIO * len(raw)))
    try:
        out = d.decompress(raw, cap + 1)
    except zlib.error as e:
        raise DataError(f"{uri}: corrupt or truncated gzip ({e})") from None
    if len(out) > cap:
        raise DataError(f"{uri}: {len(raw)} bytes inflate to more than {cap} (the limit for this file: "
                        f"{MAX_INFLATE_RATIO}x its size, at most LTAUG_MAX_DECODED_BYTES={MAX_DECODED_BYTES}); a gzip "
                        f"bomb? Set LTAUG_MAX_INFLATE_RATIO / LTAUG_MAX_DECODED_BYTES if the file is real")
    if not d.eof:
        raise DataError(f"{uri}: corrupt or truncated gzip (the stream ends early)")
    return out


def read_idx(uri: str, magic: int) -> np.ndarray:
    try:
        raw = storage.read_bytes(uri, max_bytes=MAX_DECODED_BYTES)
    except storage.StorageError as e:
        raise DataError(str(e)) from None
    if uri.endswith(".gz"):
        raw = _gunzip(raw, uri, MAX_DECODED_BYTES)
    if len(raw) < 8:
        raise DataError(f"{uri}: {len(raw)} bytes, too short for an IDX header")
    got, = struct.unpack(">I", raw[:4])
    if got != magic:
        raise DataError(f"{uri}: wrong IDX magic 0x{got:08x}; expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{uri}: {len(raw)} bytes, too short for a {ndim}-dimensional IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    need = header + math.prod(dims)           # Python ints: no overflow for hostile dimensions
    if len(raw) != need:
        raise DataError(f"{uri}: {len(raw)} bytes but the header {list(dims)} needs {need} "
                        f"(file truncated or corrupt)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_idx_split(cfg: DataConfig, split: str) -> ImageSet:
    img_name, lbl_name = FILES[split]
    img_uri, lbl_uri = _locate(cfg, img_name), _locate(cfg, lbl_name)
    if img_uri is None or lbl_uri is None:
        raise missing(cfg.source, cfg.root, [f"{n}[.gz] in {cfg.root}{{,/raw}}" for n in FILES[split]])
    images = read_idx(img_uri, IMAGES_MAGIC)
    labels = read_idx(lbl_uri, LABELS_MAGIC).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{img_uri}: {len(images)} images but {lbl_uri} has {len(labels)} labels")
    names = FASHION_NAMES if cfg.source == "fashion_mnist" else tuple(str(i) for i in range(10))
    return finish(cfg, images[..., None], labels, 10, f"{cfg.source}[{split}]", names)
