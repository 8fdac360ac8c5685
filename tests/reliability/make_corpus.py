"""Regenerates the bad-input corpus in ./corpus (committed; run only to rebuild it)."""
from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
import sys
import tarfile
import zlib
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
    hostile(rng, img, batch, raw)


def _tar(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode, format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))


def _png_bomb(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming width x height gray pixels, with one tiny IDAT (a bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


def hostile(rng, img, batch, raw) -> None:
    """Inputs a careless or hostile user would try (issue "Hostile and careless input"), in their real formats."""
    # -- CIFAR: float labels (3.7 would truncate to 3), float pixels in [0,1), pixels > 255, a stray .bak copy
    for name, change in (("cifar_float_labels", {b"labels": [0.0, 1.0, 2.0, 3.7, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]}),
                         ("cifar_float_pixels", {b"data": rng.rand(10, 3072)}),
                         ("cifar_wide_pixels", {b"data": np.full((10, 3072), 300, dtype=np.int32)})):
        d = HERE / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "data_batch_1").write_bytes(pickle.dumps({**batch, **change}, protocol=2))
        (d / "test_batch").write_bytes(raw)
    d = HERE / "cifar_stray_bak"
    d.mkdir(parents=True, exist_ok=True)
    (d / "data_batch_1").write_bytes(raw)
    (d / "data_batch_1.bak").write_bytes(raw)
    (d / "test_batch").write_bytes(raw)
    # -- image folders: a 16-bit PNG, a hidden .ipynb_checkpoints folder, test class names != train,
    #    a .png symlink to /dev/zero, a decompression-bomb PNG header, a directory where a list entry expects a file
    d = HERE / "folder_png16" / "train"
    for c in ("a", "b"):
        (d / c).mkdir(parents=True, exist_ok=True)
        (d / c / "ok.png").write_bytes(png(img[..., 0]))
    Image.fromarray(np.full((8, 8), 30000, dtype=np.uint16)).save(d / "a" / "deep.png")
    d = HERE / "folder_hidden_dir" / "train"
    for c in ("a", "b", ".ipynb_checkpoints"):
        (d / c).mkdir(parents=True, exist_ok=True)
        (d / c / "ok.png").write_bytes(png(img))
    (d / "a" / "._ok.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    d = HERE / "folder_test_names"
    for split, classes in (("train", ("cat", "dog")), ("test", ("cat", "emu"))):
        for c in classes:
            (d / split / c).mkdir(parents=True, exist_ok=True)
            (d / split / c / "ok.png").write_bytes(png(img))
    d = HERE / "folder_devzero" / "train"
    for c in ("a", "b"):
        (d / c).mkdir(parents=True, exist_ok=True)
        (d / c / "ok.png").write_bytes(png(img))
    link = d / "a" / "zero.png"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink("/dev/zero", link)
    d = HERE / "folder_png_bomb" / "train"
    for c in ("a", "b"):
        (d / c).mkdir(parents=True, exist_ok=True)
        (d / c / "ok.png").write_bytes(png(img))
    (d / "b" / "bomb.png").write_bytes(_png_bomb(100_000, 100_000))
    d = HERE / "list_dir_entry"
    (d / "img" / "sub.jpg").mkdir(parents=True, exist_ok=True)
    (d / "img" / "sub.jpg" / "README").write_text("a directory named like an image (git keeps no empty folder)")
    (d / "img" / "a.jpg").write_bytes(png(img, "JPEG"))
    (d / "ImageNet_LT_train.txt").write_text("img/a.jpg 0\nimg/sub.jpg 1\n")
    # -- memory bombs: one huge label in a list file; a gzip bomb IDX
    d = HERE / "list_huge_label"
    (d / "img").mkdir(parents=True, exist_ok=True)
    (d / "img" / "a.jpg").write_bytes(png(img, "JPEG"))
    (d / "ImageNet_LT_train.txt").write_text("img/a.jpg 0\nimg/a.jpg 999999999\n")
    d = HERE / "idx_gzip_bomb"
    d.mkdir(parents=True, exist_ok=True)
    n = 100_000
    with gzip.open(d / "train-images-idx3-ubyte.gz", "wb", compresslevel=9) as fh:
        fh.write(struct.pack(">IIII", 0x803, n, 28, 28))
        zeros = b"\0" * (1 << 20)
        for _ in range(n * 784 // len(zeros)):
            fh.write(zeros)
        fh.write(b"\0" * (n * 784 % len(zeros)))
    (d / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + bytes(n))
    # -- WebDataset shards: .tar.gz (must be read, not skipped), a repeated member, a key in two shards,
    #    a huge .cls, an unfinished generation output (plan, shard, no manifest), a repeated JSON key
    cls = lambda c: str(c).encode()  # noqa: E731
    samples = [(f"s{i:03d}.png", png(img)) if k == 0 else (f"s{i:03d}.cls", cls(i % 2))
               for i in range(4) for k in range(2)]
    _tar(HERE / "shard_targz" / "train" / "part-0.tar.gz", samples, "w:gz")
    _tar(HERE / "shard_dup_member" / "train" / "part-0.tar",
         [("s000.png", png(img)), ("s000.cls", cls(0)), ("s000.cls", cls(1))])
    _tar(HERE / "shard_dup_key" / "train" / "part-0.tar", [("s000.png", png(img)), ("s000.cls", cls(0)),
                                                            ("s001.png", png(img)), ("s001.cls", cls(1)),
                                                            ("s000.png", png(img[::-1])), ("s000.cls", cls(1))])
    _tar(HERE / "shard_huge_cls" / "train" / "part-0.tar", [("s000.png", png(img)), ("s000.cls", cls(0)),
                                                             ("s001.png", png(img)), ("s001.cls", b"999999999")])
    d = HERE / "shard_unfinished"
    _tar(d / "gen-00000000-000000.tar", [("c000-i000000.png", png(img)), ("c000-i000000.cls", cls(0))])
    (d / "_plan.json").write_text(json.dumps({"note": "plan of a killed generate job"}))
    _tar(HERE / "shard_dup_json_key" / "train" / "part-0.tar",
         [("s000.cls", cls(0)), ("s000.json", b'{"class": 0, "class": 1}'), ("s000.png", png(img))])
    # -- configs: an alias bomb, a recursive alias, an integer that overflows int64, a repeated top-level key
    d = HERE / "configs"
    (d / "alias_bomb.yaml").write_text("tune:\n  space:\n    a: &a [x, x, x, x, x, x, x, x, x]\n"
                                       + "".join(f"    {chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n"
                                                 for i in range(8)))
    (d / "recursive_alias.yaml").write_text("tune:\n  space: &loop\n    again: *loop\n")
    (d / "huge_int.yaml").write_text("train:\n  steps: 99999999999999999999999999\n")
    (d / "dup_section.yaml").write_text("train:\n  steps: 5\ndata:\n  source: digits\ntrain:\n  lr: 0.1\n")
    (d / "big_seed.yaml").write_text("seed: 18446744073709551616\n")


if __name__ == "__main__":
    main()
    sys.exit(0)
