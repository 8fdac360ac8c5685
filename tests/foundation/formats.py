"""Writers of small datasets in the real on-disk formats (CIFAR pickles, IDX, folders, lists, shards)."""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def write_cifar10(root: Path, per_class_train: int, per_class_test: int, batches: int = 5, seed: int = 0) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    labels = np.repeat(np.arange(10), per_class_train)
    rng.shuffle(labels)
    for b, part in enumerate(np.array_split(labels, batches), 1):
        data = rng.randint(0, 256, size=(len(part), 3072), dtype=np.uint8)
        _pickle(d / f"data_batch_{b}", {b"batch_label": b"training batch", b"labels": part.tolist(), b"data": data})
    tl = np.repeat(np.arange(10), per_class_test)
    _pickle(d / "test_batch", {b"labels": tl.tolist(), b"data": rng.randint(0, 256, (len(tl), 3072), dtype=np.uint8)})
    _pickle(d / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return d


def write_cifar100(root: Path, per_class_train: int, per_class_test: int, seed: int = 0) -> Path:
    d = root / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    for split, n in (("train", per_class_train), ("test", per_class_test)):
        y = np.repeat(np.arange(100), n)
        rng.shuffle(y)
        _pickle(d / split, {b"fine_labels": y.tolist(), b"coarse_labels": (y // 5).tolist(),
                            b"data": rng.randint(0, 256, (len(y), 3072), dtype=np.uint8)})
    _pickle(d / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    return d


def _pickle(path: Path, obj) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def write_idx(root: Path, n_train_per_class: int, n_test_per_class: int, gz: bool = True, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    for prefix, n in (("train", n_train_per_class), ("t10k", n_test_per_class)):
        y = np.repeat(np.arange(10), n).astype(np.uint8)
        rng.shuffle(y)
        x = rng.randint(0, 256, (len(y), 28, 28), dtype=np.uint8)
        _idx(root / f"{prefix}-images-idx3-ubyte", 0x803, x, gz)
        _idx(root / f"{prefix}-labels-idx1-ubyte", 0x801, y, gz)
    return root


def _idx(path: Path, magic: int, arr: np.ndarray, gz: bool) -> None:
    raw = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if gz:
        Path(str(path) + ".gz").write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


def png_bytes(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def write_imagefolder(root: Path, counts: dict[str, int], split: str = "train", size: int = 12,
                      mode: str = "RGB", seed: int = 0) -> Path:
    rng = np.random.RandomState(seed)
    for name, n in counts.items():
        d = root / split / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            arr = rng.randint(0, 256, shape, dtype=np.uint8)
            (d / f"{i:04d}.{'png' if i % 2 == 0 else 'jpg'}").write_bytes(png_bytes(arr, "PNG" if i % 2 == 0 else "JPEG"))
    return root


def write_list_dataset(root: Path, per_class: dict[int, int], split_file: str, seed: int = 0) -> Path:
    rng = np.random.RandomState(seed)
    lines = []
    for c, n in per_class.items():
        d = root / "images" / f"n{c:04d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rel = f"images/n{c:04d}/{split_file[:5]}_{i}.jpg"
            (root / rel).write_bytes(png_bytes(rng.randint(0, 256, (10, 14, 3), dtype=np.uint8), "JPEG"))
            lines.append(f"{rel} {c}")
    (root / split_file).write_text("\n".join(lines) + "\n")
    return root


def write_shard(path: Path, samples: list[tuple[str, np.ndarray, int]], extra: dict[str, bytes] | None = None) -> Path:
    """samples: (key, uint8 image, label) -> a tar with <key>.png, <key>.cls, <key>.json."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, img, label in samples:
            for ext, data in (("png", png_bytes(img)), ("cls", str(label).encode()), ("json", b'{"class": %d}' % label)):
                _add(tar, f"{key}.{ext}", data)
        for name, data in (extra or {}).items():
            _add(tar, name, data)
    return path


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
