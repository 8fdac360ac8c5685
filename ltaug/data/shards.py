"""WebDataset shards: ``<key>.png|jpg`` + ``<key>.cls`` (+ ``<key>.json``) per sample, in ``*.tar`` files.

Read with Python's tarfile over fsspec (local or s3://). Members with absolute paths or ``..`` are
rejected; a sample without an image or a class, or whose image does not decode, is an error naming
the shard and key (or a counted skip with ``on_bad="skip"``).
"""
from __future__ import annotations

import json
import logging
import tarfile
from typing import Any, Iterator

import numpy as np

from .. import storage
from .sources.common import DataError, resize
from .sources.images import ImageDecodeError, decode, stack
from .types import ImageSet

log = logging.getLogger("ltaug.data")
IMAGE_KEYS = ("png", "jpg", "jpeg")


class UnsafeShardError(DataError):
    pass


def list_shards(uri: str) -> list[str]:
    """Sorted ``*.tar`` files under a directory / prefix, or ``uri`` itself when it is a tar."""
    if uri.endswith(".tar"):
        return [uri]
    return storage.listdir(uri, ".tar")


def _safe_name(name: str, shard: str) -> str:
    if name.startswith("/") or ".." in name.split("/") or "\\" in name:
        raise UnsafeShardError(f"{shard}: member {name!r} has an absolute or parent path; refusing to read")
    return name


END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE  # two zero blocks end every tar (POSIX ustar)


def iter_samples(shard: str) -> Iterator[dict[str, Any]]:
    """Yield ``{"__key__", "__url__", ext: bytes}`` per sample, in tar order (keys must be contiguous)."""
    fs, path = storage.get_fs(shard)
    current: dict[str, Any] | None = None
    seen: set[str] = set()
    with fs.open(path, "rb") as fh:
        try:
            tar = tarfile.open(fileobj=fh, mode="r|*")
        except tarfile.TarError as e:
            raise DataError(f"{shard}: not a readable tar ({e})") from None
        try:
            for member in tar:
                name = _safe_name(member.name, shard)
                if not member.isfile():
                    continue
                base = name.rsplit("/", 1)[-1]
                if "." not in base:
                    continue
                prefix = name[: len(name) - len(base)]
                stem, ext = base.split(".", 1)
                key = prefix + stem
                if current is None or current["__key__"] != key:
                    if current is not None:
                        yield current
                    if key in seen:
                        raise DataError(f"{shard}: key {key!r} is not contiguous in the tar")
                    seen.add(key)
                    current = {"__key__": key, "__url__": shard}
                data = tar.extractfile(member)
                current[ext] = data.read() if data is not None else b""
        except tarfile.TarError as e:
            raise DataError(f"{shard}: truncated or corrupt tar ({e})") from None
        # A tar cut exactly at a member boundary reads as a shorter valid tar; every complete tar ends with
        # an end-of-archive marker (two zero blocks) after the last member, so its absence is truncation.
        size = fs.size(path)
        if size < tar.offset + END_OF_ARCHIVE:
            raise DataError(f"{shard}: truncated tar (no end-of-archive marker after {tar.offset} of {size} bytes)")
        if current is not None:
            yield current


def read_shards(uri: str, image_size: int, channels: int = 0, on_bad: str = "error",
                num_classes: int | None = None, with_meta: bool = False) -> ImageSet | tuple[ImageSet, list[dict]]:
    """All samples of the shards under ``uri`` as an ImageSet (optionally with their parsed json)."""
    shards = list_shards(uri)
    if not shards:
        raise DataError(f"{uri}: no .tar shards found")
    images, labels, metas = [], [], []
    skipped = 0

    def bad(msg: str) -> None:
        nonlocal skipped
        if on_bad == "error":
            raise DataError(msg + " (use on_bad_record=skip to skip and count)")
        skipped += 1
        log.warning("skipping: %s", msg)

    for shard in shards:
        for s in iter_samples(shard):
            where = f"{shard} key {s['__key__']!r}"
            img_ext = next((k for k in IMAGE_KEYS if k in s), None)
            if img_ext is None or "cls" not in s:
                bad(f"{where}: sample needs an image (.png/.jpg) and a .cls member, has {sorted(k for k in s if not k.startswith('__'))}")
                continue
            try:
                label = int(s["cls"].decode().strip())
            except ValueError:
                bad(f"{where}: .cls is not an integer: {s['cls'][:20]!r}")
                continue
            if label < 0 or (num_classes is not None and label >= num_classes):
                bad(f"{where}: label {label} out of range 0..{(num_classes or 1) - 1}")
                continue
            try:
                img = decode(s[img_ext], where, image_size, channels)
            except ImageDecodeError as e:
                bad(str(e))
                continue
            images.append(img)
            labels.append(label)
            if with_meta:
                metas.append(json.loads(s["json"]) if "json" in s else {})
    if skipped:
        log.warning("%s: skipped %d bad sample(s)", uri, skipped)
    arr = stack(images, uri) if images else np.zeros((0, image_size, image_size, max(channels, 1)), np.uint8)
    n_cls = num_classes if num_classes is not None else (max(labels) + 1 if labels else 0)
    out = ImageSet(arr, np.asarray(labels, dtype=np.int64), n_cls, tuple(str(i) for i in range(n_cls)),
                   f"shards:{uri}", skipped)
    return (out, metas) if with_meta else out


def load_webdataset_split(cfg, split: str) -> ImageSet:
    """``data.source=webdataset``: shards under ``root/train`` and ``root/test``."""
    base = storage.join(cfg.root, split)
    if not list_shards(base):
        raise DataError(f"webdataset: no .tar shards under {base!r}; expected {cfg.root}/train/*.tar and "
                        f"{cfg.root}/test/*.tar")
    s = read_shards(base, cfg.image_size, cfg.channels, cfg.on_bad_record, cfg.num_classes or None)
    if cfg.channels == 0 and s.channels not in (1, 3):
        s = ImageSet(resize(s.images, cfg.image_size, 3), s.labels, s.num_classes, s.class_names, s.source, s.skipped)
    return s
