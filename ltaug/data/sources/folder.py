"""ImageFolder trees (``root/<split>/<class>/<image>``) and ImageNet-LT style list files
(``relative/path.jpg label`` per line, paths relative to ``data.root``; Liu et al. 2019, OLTR)."""
from __future__ import annotations

import numpy as np

from ... import storage
from ...config import DataConfig
from ..types import ImageSet
from .common import MAX_LIST_BYTES, DataError, bad_record, check_num_classes, finish, is_hidden, log, missing
from .images import IMAGE_EXTENSIONS, decode_files, stack

from .common import MAX_CLASSES as MAX_LABEL  # noqa: E402  (labels of an inferred class count)

SPLIT_DIRS = {"train": ("train",), "test": ("test", "val")}


def _split_base(cfg: DataConfig, split: str) -> str | None:
    return next((storage.join(cfg.root, d) for d in SPLIT_DIRS[split] if storage.exists(storage.join(cfg.root, d))),
                None)


def _class_dirs(base: str) -> list[str]:
    """Sorted class folder names under ``base``; hidden / system folders (``.ipynb_checkpoints``) are not classes."""
    fs, path = storage.get_fs(base)
    try:
        entries = storage.with_retry(lambda: fs.ls(path, detail=True), f"list {base}")
    except NotADirectoryError:
        raise DataError(f"{base}: is a file; expected a folder of class folders") from None
    names = sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")
    hidden = [n for n in names if is_hidden(n)]
    if hidden:
        log.warning("%s: ignoring hidden folder(s) %s (not classes)", base, hidden)
    return [n for n in names if not is_hidden(n)]


def load_imagefolder_split(cfg: DataConfig, split: str) -> ImageSet:
    base = _split_base(cfg, split)
    if base is None:
        raise missing("imagefolder", cfg.root, [f"{cfg.root}/{'|'.join(SPLIT_DIRS[split])}/<class>/<image>"])
    classes = _class_dirs(base)
    if not classes:
        raise DataError(f"{base}: no class folders")
    index = {n: c for c, n in enumerate(classes)}
    if split != "train":   # labels are indices into the *train* classes: compare the names, never trust the order
        train_base = _split_base(cfg, "train")
        if train_base is not None:
            train_classes = _class_dirs(train_base)
            unknown = [n for n in classes if n not in train_classes]
            if unknown:
                raise DataError(f"{base}: class folder(s) {unknown[:5]} are not classes of {train_base} "
                                f"({len(unknown)} such); train and {split} must use the same class names")
            absent = [n for n in train_classes if n not in classes]
            if absent:
                log.warning("%s: no %s folder for class(es) %s of %s", base, split, absent[:5], train_base)
            classes = train_classes
            index = {n: c for c, n in enumerate(classes)}
    check_num_classes(len(classes), base)
    files, labels = [], []
    for name in classes:
        folder = storage.join(base, name)
        if not storage.exists(folder):
            continue
        found = [f for f in storage.listdir(folder)
                 if f.lower().endswith(IMAGE_EXTENSIONS) and not is_hidden(f)]
        if not found and split == "train":
            raise DataError(f"{folder}: class {name!r} has no images (empty class)")
        files += found
        labels += [index[name]] * len(found)
    if not files:
        raise DataError(f"{base}: no images")
    num_classes = cfg.num_classes or len(classes)
    if cfg.num_classes and cfg.num_classes < len(classes):
        raise DataError(f"{base}: {len(classes)} class folders but data.num_classes={cfg.num_classes}")
    return _decode_all(cfg, files, np.asarray(labels), num_classes, f"imagefolder[{split}]", tuple(classes))


def load_list_split(cfg: DataConfig, split: str) -> ImageSet:
    list_uri = storage.join(cfg.root, cfg.train_list if split == "train" else cfg.test_list)
    if not storage.exists(list_uri):
        raise missing("imagenet_lt", cfg.root, [cfg.train_list, cfg.test_list, "the images they list"])
    files, labels = [], []
    skipped = [0]
    try:
        text = storage.read_bytes(list_uri, max_bytes=MAX_LIST_BYTES).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{list_uri}: not UTF-8 text ({e}); expected 'relative/path label' lines") from None
    except storage.StorageError as e:
        raise DataError(str(e)) from None
    for lineno, line in enumerate(text.splitlines(), 1):
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
        label = int(parts[1])
        if label < 0 or label >= (cfg.num_classes or MAX_LABEL):
            bad_record(cfg, f"{list_uri}:{lineno}: record {lineno} has label {label}, outside "
                       f"0..{(cfg.num_classes or MAX_LABEL) - 1}"
                       + ("" if cfg.num_classes else " (set data.num_classes if the dataset has more classes)"),
                       skipped)
            continue
        files.append(storage.join(cfg.root, rel))
        labels.append(label)
    if not files:
        raise DataError(f"{list_uri}: no entries")
    num_classes = cfg.num_classes or check_num_classes(max(labels) + 1, list_uri)
    return _decode_all(cfg, files, np.asarray(labels), num_classes, f"imagenet_lt[{split}]", (), skipped[0])


def _decode_all(cfg: DataConfig, files: list[str], labels: np.ndarray, num_classes: int, source: str,
                names: tuple[str, ...], skipped: int = 0) -> ImageSet:
    counter = [skipped]
    arrays = decode_files(files, cfg.image_size, cfg.channels, lambda m: bad_record(cfg, m, counter), desc=source)
    keep = [i for i, a in enumerate(arrays) if a is not None]
    images = stack([arrays[i] for i in keep], source)
    return finish(cfg, images, labels[keep], num_classes, source, names, counter[0])
