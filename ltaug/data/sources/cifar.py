"""CIFAR-10 / CIFAR-100 "python version" pickle batches (Krizhevsky 2009), read through fsspec.

CIFAR-10: ``data_batch_*`` (train, any number of batches of any length) and ``test_batch``;
CIFAR-100: ``train`` and ``test`` (``fine_labels``). ``data.root`` may be the folder holding the files
or its parent (``cifar-10-batches-py`` / ``cifar-100-python`` inside). Pickles are read with a
restricted unpickler that only builds numpy arrays, lists, dicts and scalars (no code execution).
"""
from __future__ import annotations

import io
import pickle
import re

import numpy as np

from ... import storage
from ...config import DataConfig
from ..types import ImageSet
from .common import log
from .common import (MAX_DECODED_BYTES, DataError, bad_record, finish, integer_labels, missing,
                     uint8_pixels)

RECORD = 3 * 32 * 32
_SAFE = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
         ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
         ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}
LAYOUT = {"cifar10": ("cifar-10-batches-py", "labels", "batches.meta", "label_names", 10),
          "cifar100": ("cifar-100-python", "fine_labels", "meta", "fine_label_names", 100)}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name} in a data pickle")


def load_pickle(uri: str) -> dict:
    """Read one CIFAR pickle; a truncated or foreign file is a :class:`DataError` naming it."""
    try:
        data = storage.read_bytes(uri, max_bytes=MAX_DECODED_BYTES)
    except storage.StorageError as e:
        raise DataError(str(e)) from None
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - every unpickling failure means a bad file
        raise DataError(f"{uri}: not a readable CIFAR pickle ({type(e).__name__}: {e}); "
                        f"the file may be truncated or corrupt") from None
    if not isinstance(obj, dict):
        raise DataError(f"{uri}: expected a dict batch, got {type(obj).__name__}")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _find_dir(cfg: DataConfig, sub: str, probe: str) -> str:
    for d in (cfg.root, storage.join(cfg.root, sub)):
        if storage.glob(storage.join(d, probe)):
            return d
    return ""


def _batch_files(cfg: DataConfig, split: str) -> tuple[str, list[str]]:
    sub = LAYOUT[cfg.source][0]
    if cfg.source == "cifar10":
        pattern = "data_batch_*" if split == "train" else "test_batch"
        expected = ["data_batch_1 .. data_batch_5", "test_batch"]
    else:
        pattern = split
        expected = ["train", "test"]
    d = _find_dir(cfg, sub, pattern)
    if not d:
        raise missing(cfg.source, cfg.root, [f"{e} (in {cfg.root} or {cfg.root}/{sub})" for e in expected])
    exact = re.compile(r"data_batch_\d+" if pattern == "data_batch_*" else re.escape(pattern))
    found = storage.glob(storage.join(d, pattern))
    files = [f for f in found if exact.fullmatch(f.rsplit("/", 1)[-1])]
    stray = [f for f in found if f not in files and not f.endswith((".meta", ".html"))]
    if stray:   # data_batch_1.bak, data_batch_1 (copy): never read twice, but say so
        log.warning("%s: ignoring %d file(s) that are not CIFAR batch names, e.g. %s", d, len(stray), stray[0])
    key = lambda f: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", f)]  # noqa: E731
    return d, sorted(files, key=key)


def load_cifar_split(cfg: DataConfig, split: str) -> ImageSet:
    _, label_key, meta_name, names_key, num_classes = LAYOUT[cfg.source]
    d, files = _batch_files(cfg, split)
    images, labels, skipped = [], [], [0]
    for f in files:
        batch = load_pickle(f)
        if "data" not in batch or label_key not in batch:
            raise DataError(f"{f}: missing key 'data' or {label_key!r}; keys are {sorted(batch)}")
        data = uint8_pixels(batch["data"], f"{f}: 'data'")
        y = integer_labels(batch[label_key], f"{f}: {label_key!r}")
        if data.ndim != 2 or data.shape[1] != RECORD:
            raise DataError(f"{f}: 'data' has shape {data.shape}; expected [N, {RECORD}] (32x32x3 uint8 rows)")
        if len(y) != len(data):
            raise DataError(f"{f}: {len(data)} images but {len(y)} labels")
        ok = np.ones(len(y), dtype=bool)
        for i in np.where((y < 0) | (y >= num_classes))[0]:
            bad_record(cfg, f"{f}: record {int(i)} has label {int(y[i])}, outside 0..{num_classes - 1}", skipped)
            ok[i] = False
        images.append(data[ok].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.uint8))
        labels.append(y[ok])
    names: tuple[str, ...] = ()
    meta_uri = storage.join(d, meta_name)
    if storage.exists(meta_uri):
        meta = load_pickle(meta_uri)
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(names_key, ()))
        if names and len(names) != num_classes:
            raise DataError(f"{meta_uri}: {names_key!r} lists {len(names)} class names; {cfg.source} has "
                            f"{num_classes}. Wrong meta file or wrong data.source")
    return finish(cfg, np.concatenate(images), np.concatenate(labels), num_classes,
                  f"{cfg.source}[{split}]", names if len(names) == num_classes else (), skipped[0])
