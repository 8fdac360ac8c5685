"""Regenerates the bad-input corpus in ./corpus (committed; run only to rebuild it)."""
from __future__ import annotations

import io
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent / "corpus"


def png(arr, fmt="PNG"):
    b = io.BytesIO()
    Image.fromarray(arr).save(b, format=fmt)
    return b.getvalue()


def main() -> None:
    rng = np.random.RandomState(0)
    img = rng.randint(0, 256, (8, 8, 3), dtype=np.uint8)
    # corrupt PNG: valid signature, garbage chunks
    d = HERE / "folder_corrupt_png" / "train"
    for c in ("a", "b"):
        (d / c).mkdir(parents=True, exist_ok=True)
        (d / c / "ok.png").write_bytes(png(img))
    (d / "b" / "broken.png").write_bytes(png(img)[:8] + b"\x00garbage" * 4)
    # truncated JPEG
    d = HERE / "folder_truncated_jpeg" / "train"
    for c in ("a", "b"):
        (d / c).mkdir(parents=True, exist_ok=True)
        (d / c / "ok.jpg").write_bytes(png(img, "JPEG"))
    (d / "a" / "cut.jpg").write_bytes(png(img, "JPEG")[:40])
    # empty class
    d = HERE / "folder_empty_class" / "train"
    (d / "a").mkdir(parents=True, exist_ok=True)
    (d / "a" / "ok.png").write_bytes(png(img))
    (d / "b").mkdir(parents=True, exist_ok=True)
    (d / "b" / "README.txt").write_text("no images here")
    # truncated CIFAR pickle
    d = HERE / "cifar_truncated"
    d.mkdir(parents=True, exist_ok=True)
    batch = {b"labels": list(range(10)), b"data": rng.randint(0, 256, (10, 3072), dtype=np.uint8)}
    raw = pickle.dumps(batch, protocol=2)
    (d / "data_batch_1").write_bytes(raw[: len(raw) // 3])
    (d / "test_batch").write_bytes(raw)
    # CIFAR label out of range
    d = HERE / "cifar_bad_label"
    d.mkdir(parents=True, exist_ok=True)
    bad = dict(batch)
    bad[b"labels"] = list(range(9)) + [10]
    (d / "data_batch_1").write_bytes(pickle.dumps(bad, protocol=2))
    (d / "test_batch").write_bytes(raw)
    # wrong IDX magic
    d = HERE / "idx_wrong_magic"
    d.mkdir(parents=True, exist_ok=True)
    x = rng.randint(0, 256, (4, 28, 28), dtype=np.uint8)
    (d / "train-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x00000804, 4, 28, 28) + x.tobytes())
    (d / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, 4) + bytes([0, 1, 2, 3]))
    # list file pointing at missing images
    d = HERE / "list_missing"
    (d / "img").mkdir(parents=True, exist_ok=True)
    (d / "img" / "a.jpg").write_bytes(png(img, "JPEG"))
    (d / "ImageNet_LT_train.txt").write_text("img/a.jpg 0\nimg/missing.jpg 1\n")
    # configs
    d = HERE / "configs"
    d.mkdir(parents=True, exist_ok=True)
    (d / "nan_ratio.yaml").write_text("data:\n  imbalance_ratio: .nan\n")
    (d / "negative_steps.yaml").write_text("train:\n  steps: -5\n")
    (d / "inf_lr.yaml").write_text("train:\n  lr: .inf\n")
    (d / "unknown_loss.yaml").write_text("loss:\n  focal: 1.0\n")
    (d / "unknown_guidance.yaml").write_text("guidance:\n  pag:\n    scale: 1.0\n")
    (d / "negative_omega.yaml").write_text("guidance:\n  cfg:\n    omega: -2.0\n")


if __name__ == "__main__":
    main()
    sys.exit(0)
