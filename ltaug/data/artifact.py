"""The dataset artifact: ``load_dataset(cfg.data)`` decoded once, stored as plain row-aligned ``.npy`` files.

Every stage, Ray worker and Tune trial opens the same artifact instead of decoding the source again.
Layout of ``<root>/<source>-<digest>/`` (``root``: a local path or an ``s3://`` URI)::

    train_images.npy    uint8 [N,H,W,C]   the long-tailed train set, resized to data.image_size
    train_labels.npy    int64 [N]         class ids in 0..num_classes-1
    train_indices.npy   int64 [N]         row ids in the source's train split
    val_images.npy, val_labels.npy, val_indices.npy       the same for the validation split (its
                        indices are rows of the source's *train* split, disjoint from train_indices)
    test_images.npy, test_labels.npy, test_indices.npy    the same for the balanced test set
    meta.json           written last, the commit marker: format, digest, source, num_classes,
                        class_names, image_size, channels, groups, per split {count, class_counts,
                        skipped, source}, val_held_out (per class: validation images taken out of
                        the profile's train images), profile (what the long-tail profile kept
                        and dropped, with a warning when it drops more than half), the data
                        config, build_id

Row i of a split's three arrays is one image, so a split can be read in row ranges or streamed
(e.g. ``ray.data.read_numpy`` over the three files). Each array is written atomically and
``meta.json`` last: a directory without ``meta.json`` is absent (a torn build) and is rebuilt, and
concurrent builders write the same bytes. A directory whose ``meta.json`` disagrees with its arrays
is an error naming the file, never rebuilt silently.

The digest covers every ``data.*`` key except ``cache_dir`` (where artifacts live, not what they
hold) and ``FORMAT_VERSION``. It keys the configuration, not the source's bytes: after changing
source files in place, delete the artifact. Locally the arrays are memory-mapped (processes share
the pages); an ``s3://`` artifact is copied once into ``$LTAUG_CACHE/datasets`` and mapped there.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import uuid
from dataclasses import asdict, fields
from typing import Any

import numpy as np

from .. import storage
from ..config import DataConfig
from .dataset import LTDataset, load_dataset
from .sources.common import DataError
from .types import ImageSet

FORMAT_VERSION = 2             # bump when the layout or meta.json changes; old artifacts get new names
                               # (2: + the validation split, val_* arrays and val_held_out)
DIGEST_LENGTH = 12             # hex characters of sha256 in the directory name
DIGEST_EXCLUDE = ("cache_dir",)  # data keys that say where artifacts live, not what they hold
META = "meta.json"
SPLITS = ("train", "val", "test")
ARRAYS = {"images": np.uint8, "labels": np.int64, "indices": np.int64}
META_KEYS = ("format", "digest", "source", "num_classes", "class_names", "image_size", "channels",
             "groups", "splits", "val_held_out", "data")
CACHE_SUBDIR = "datasets"      # under $LTAUG_CACHE: local copies of s3:// artifacts


class ArtifactError(DataError):
    """A present but inconsistent dataset artifact; the message names the file."""


def dataset_digest(dcfg: DataConfig) -> str:
    """Stable short digest of the data keys that change the arrays or their metadata. ``imbalance_ratio`` enters
    as the ratio in effect (0 = the source's default), so ``0`` and the default's value share one artifact."""
    data = {k: v for k, v in asdict(dcfg).items() if k not in DIGEST_EXCLUDE}
    data["imbalance_ratio"] = dcfg.ratio
    text = json.dumps({"format": FORMAT_VERSION, "data": data}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_LENGTH]


def artifact_uri(dcfg: DataConfig, root: str) -> str:
    return storage.join(root, f"{dcfg.source}-{dataset_digest(dcfg)}")


def array_name(split: str, name: str) -> str:
    return f"{split}_{name}.npy"


def build_artifact(dcfg: DataConfig, root: str) -> str:
    """The URI of the artifact of ``dcfg`` under ``root``; decodes the source only if none is committed."""
    uri = artifact_uri(dcfg, root)
    digest = dataset_digest(dcfg)
    if _committed(uri, digest):
        return uri
    data = load_dataset(dcfg)
    if _committed(uri, digest):  # another builder finished while this one decoded
        return uri
    for split in SPLITS:
        s = _split(data, split)
        rows = {"images": s.images, "labels": s.labels,
                "indices": s.indices if s.indices is not None else np.arange(len(s))}
        for name, dtype in ARRAYS.items():
            _write_npy(storage.join(uri, array_name(split, name)), np.ascontiguousarray(rows[name], dtype=dtype))
    storage.write_text(storage.join(uri, META), json.dumps(_meta(dcfg, data, digest), indent=1))
    return uri


def open_artifact(uri: str) -> LTDataset:
    """The committed artifact at ``uri`` as an ``LTDataset`` over read-only memory-mapped arrays."""
    meta_uri = storage.join(uri, META)
    if not storage.exists(meta_uri):
        raise ArtifactError(f"{meta_uri}: no dataset artifact here (meta.json missing: never built, or torn)")
    raw = storage.read_bytes(meta_uri)
    meta = _parse_meta(meta_uri, raw)
    name = os.path.basename(storage.strip_scheme(uri).rstrip("/"))
    if name != f"{meta['source']}-{meta['digest']}":
        raise ArtifactError(f"{meta_uri}: digest {meta['digest']!r} / source {meta['source']!r} "
                            f"do not match the directory name {name!r}")
    _check_arrays(uri, meta)
    local = storage.strip_scheme(uri)
    if storage.is_remote(uri):
        local = _local_copy(uri, raw)
        _check_arrays(local, meta)
    sets = {split: _open_split(local, meta, split) for split in SPLITS}
    profile = meta.get("profile") if isinstance(meta.get("profile"), dict) else {}
    return LTDataset(train=sets["train"], test=sets["test"], groups={k: list(v) for k, v in meta["groups"].items()},
                     val=sets["val"], val_held_out=tuple(int(h) for h in meta["val_held_out"]), profile=profile)


def load_data(dcfg: DataConfig, root: str) -> tuple[LTDataset, str]:
    """Build the artifact of ``dcfg`` under ``root`` if needed, open it; (dataset, artifact URI)."""
    uri = build_artifact(dcfg, root)
    return open_artifact(uri), uri


# --- writing -------------------------------------------------------------------------------------

def _split(data: LTDataset, split: str) -> ImageSet:
    return data.validation if split == "val" else getattr(data, split)


def _meta(dcfg: DataConfig, data: LTDataset, digest: str) -> dict[str, Any]:
    public = {f.name: getattr(dcfg, f.name) for f in fields(dcfg) if not f.metadata.get("secret")}
    splits = {split: {"count": len(s), "class_counts": list(s.counts.counts), "skipped": int(s.skipped),
                      "source": s.source}
              for split, s in ((split, _split(data, split)) for split in SPLITS)}
    return {"format": FORMAT_VERSION, "digest": digest, "source": dcfg.source, "num_classes": data.num_classes,
            "class_names": list(data.train.class_names), "image_size": data.train.image_size,
            "channels": data.train.channels, "groups": data.groups, "splits": splits,
            "val_held_out": list(data.val_held_out) or [0] * data.num_classes, "profile": dict(data.profile),
            "data": public,
            "build_id": uuid.uuid4().hex}


def _write_npy(uri: str, a: np.ndarray) -> None:
    """Atomic per file: a reader sees the previous file or the whole new one."""
    if storage.is_remote(uri):
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        storage.write_bytes(uri, buf.getvalue())
        return
    path = storage.strip_scheme(uri)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as fh:  # streamed, not buffered in memory: ImageNet-LT arrays are large
        np.save(fh, a, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# --- checking ------------------------------------------------------------------------------------

def _committed(uri: str, digest: str) -> bool:
    """False when no meta.json (absent or torn); True when complete; ArtifactError when inconsistent."""
    meta_uri = storage.join(uri, META)
    if not storage.exists(meta_uri):
        return False
    meta = _parse_meta(meta_uri, storage.read_bytes(meta_uri))
    if meta["digest"] != digest:
        raise ArtifactError(f"{meta_uri}: digest {meta['digest']!r} but the data config gives {digest!r}; "
                            f"the artifact is corrupt: delete {uri} to rebuild it")
    _check_arrays(uri, meta)
    return True


def _parse_meta(meta_uri: str, raw: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{meta_uri}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ArtifactError(f"{meta_uri}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT_VERSION:
        raise ArtifactError(f"{meta_uri}: format {meta.get('format')!r}, this ltaug reads format {FORMAT_VERSION}")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ArtifactError(f"{meta_uri}: missing key(s) {missing}")
    if not isinstance(meta["groups"], dict) or not isinstance(meta["splits"], dict):
        raise ArtifactError(f"{meta_uri}: groups and splits must be JSON objects")
    held = meta["val_held_out"]
    if not isinstance(held, list) or not all(isinstance(h, int) and h >= 0 for h in held):
        raise ArtifactError(f"{meta_uri}: val_held_out must be a list of per-class counts >= 0")
    for split in SPLITS:
        s = meta["splits"].get(split)
        if not isinstance(s, dict) or not all(k in s for k in ("count", "class_counts", "skipped", "source")):
            raise ArtifactError(f"{meta_uri}: splits.{split} must hold count, class_counts, skipped, source")
    return meta


def _expected_shape(meta: dict[str, Any], split: str, name: str) -> tuple[int, ...]:
    n = int(meta["splits"][split]["count"])
    return (n, meta["image_size"], meta["image_size"], meta["channels"]) if name == "images" else (n,)


def _check_arrays(uri: str, meta: dict[str, Any]) -> None:
    """Every array present, with the dtype and shape meta.json gives, and not truncated (headers only)."""
    for split in SPLITS:
        for name, dtype in ARRAYS.items():
            f = storage.join(uri, array_name(split, name))
            shape, fortran, got, offset, size = _npy_header(f)
            want = _expected_shape(meta, split, name)
            if got != np.dtype(dtype) or shape != want or fortran:
                raise ArtifactError(f"{f}: {got} {shape}{' (Fortran order)' if fortran else ''}, "
                                    f"but meta.json gives {np.dtype(dtype)} {want}")
            need = offset + int(np.prod(shape)) * got.itemsize
            if size != need:
                raise ArtifactError(f"{f}: {size} bytes, expected {need} for {got} {shape} (truncated or corrupt)")


def _npy_header(uri: str) -> tuple[tuple[int, ...], bool, np.dtype, int, int]:
    """(shape, fortran_order, dtype, data offset, file size) of an .npy file, reading only its header."""
    fmt = np.lib.format
    fs, path = storage.get_fs(uri)
    try:
        size = int(fs.size(path))
        with fs.open(path, "rb") as fh:
            version = fmt.read_magic(fh)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            return tuple(shape), bool(fortran), np.dtype(dtype), fh.tell(), size
    except FileNotFoundError:
        raise ArtifactError(f"{uri}: missing from the dataset artifact (meta.json is present)") from None
    except ValueError as e:
        raise ArtifactError(f"{uri}: not a valid .npy file ({e})") from None


def _open_split(local: str, meta: dict[str, Any], split: str) -> ImageSet:
    a = {name: np.load(os.path.join(local, array_name(split, name)), mmap_mode="r", allow_pickle=False)
         for name in ARRAYS}
    k, s = int(meta["num_classes"]), meta["splits"][split]
    labels_file = os.path.join(local, array_name(split, "labels"))
    y = a["labels"]
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
        raise ArtifactError(f"{labels_file}: labels span {int(y.min())}..{int(y.max())}, outside 0..{k - 1}")
    counts = np.bincount(y, minlength=k).tolist() if len(y) else [0] * k
    if counts != list(s["class_counts"]):
        raise ArtifactError(f"{labels_file}: class counts {counts} differ from meta.json's {s['class_counts']}")
    return ImageSet(a["images"], a["labels"], k, tuple(meta["class_names"]), s["source"], int(s["skipped"]),
                    a["indices"])


# --- s3:// -> local copy -------------------------------------------------------------------------

def _local_copy(uri: str, meta_raw: bytes) -> str:
    """A local directory mirroring the remote artifact whose meta.json is ``meta_raw`` (downloaded once)."""
    name = os.path.basename(storage.strip_scheme(uri).rstrip("/"))
    tag = hashlib.sha256(uri.encode()).hexdigest()[:8]
    dst = os.path.join(storage.local_cache_dir(), CACHE_SUBDIR, f"{name}-{tag}")
    meta_path = os.path.join(dst, META)
    if os.path.exists(meta_path):
        with open(meta_path, "rb") as fh:
            if fh.read() == meta_raw:
                return dst
        with contextlib.suppress(FileNotFoundError):  # a different build: uncommit the copy first
            os.remove(meta_path)
    fs, path = storage.get_fs(uri)
    os.makedirs(dst, exist_ok=True)
    for split in SPLITS:
        for arr in ARRAYS:
            f = array_name(split, arr)
            tmp = os.path.join(dst, f"{f}.tmp-{uuid.uuid4().hex[:8]}")
            storage.with_retry(lambda: fs.get_file(f"{path.rstrip('/')}/{f}", tmp), f"download {uri}/{f}")
            os.replace(tmp, os.path.join(dst, f))
    storage.write_bytes(meta_path, meta_raw)
    return dst
