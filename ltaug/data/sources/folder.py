"""ImageFolder trees (``root/<split>/<class>/<image>``) and ImageNet-LT style list files
(``relative/path.jpg label`` per line, paths relative to ``data.root``; Liu et al. 2019, OLTR)."""
from __future__ import annotations

import numpy as np

from ... import storage
from ...config import DataConfig
from ..types import ImageSet
from .common import DataError, bad_record, finish, missing
from .images import IMAGE_EXTENSIONS, decode_files, stack

SPLIT_DIRS = {"train": ("train",), "test": ("test", "val")}


def load_imagefolder_split(cfg: DataConfig, split: str) -> ImageSet:
    base = next((storage.join(cfg.root, d) for d in SPLIT_DIRS[split]
                 if storage.exists(storage.join(cfg.root, d))), None)
    if base is None:
        raise missing("imagefolder", cfg.root, [f"{cfg.root}/{'|'.join(SPLIT_DIRS[split])}/<class>/<image>"])
    fs, path = storage.get_fs(base)
    classes = sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=True)
                     if e.get("type") == "directory")
    if not classes:
        raise DataError(f"{base}: no class folders")
    files, labels = [], []
    for c, name in enumerate(classes):
        found = [f for f in storage.listdir(storage.join(base, name)) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            raise DataError(f"{storage.join(base, name)}: class {name!r} has no images (empty class)")
        files += found
        labels += [c] * len(found)
    num_classes = cfg.num_classes or len(classes)
    return _decode_all(cfg, files, np.asarray(labels), num_classes, f"imagefolder[{split}]", tuple(classes))


def load_list_split(cfg: DataConfig, split: str) -> ImageSet:
    list_uri = storage.join(cfg.root, cfg.train_list if split == "train" else cfg.test_list)
    if not storage.exists(list_uri):
        raise missing("imagenet_lt", cfg.root, [cfg.train_list, cfg.test_list, "the images they list"])
    files, labels = [], []
    skipped = [0]
    for lineno, line in enumerate(storage.read_bytes(list_uri).decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            bad_record(cfg, f"{list_uri}:{lineno}: expected 'relative/path label', got {line!r}", skipped)
            continue
        rel = parts[0]
        if rel.startswith("/") or ".." in rel.split("/"):
            bad_record(cfg, f"{list_uri}:{lineno}: path {rel!r} escapes the dataset root", skipped)
            continue
        files.append(storage.join(cfg.root, rel))
        labels.append(int(parts[1]))
    if not files:
        raise DataError(f"{list_uri}: no entries")
    num_classes = cfg.num_classes or (max(labels) + 1)
    return _decode_all(cfg, files, np.asarray(labels), num_classes, f"imagenet_lt[{split}]", (), skipped[0])


def _decode_all(cfg: DataConfig, files: list[str], labels: np.ndarray, num_classes: int, source: str,
                names: tuple[str, ...], skipped: int = 0) -> ImageSet:
    counter = [skipped]
    arrays = decode_files(files, cfg.image_size, cfg.channels, lambda m: bad_record(cfg, m, counter))
    keep = [i for i, a in enumerate(arrays) if a is not None]
    images = stack([arrays[i] for i in keep], source)
    return finish(cfg, images, labels[keep], num_classes, source, names, counter[0])
