"""WebDataset shards: ``<key>.png|jpg`` + ``<key>.cls`` (+ ``<key>.json``) per sample, in ``*.tar`` files.

Read with Python's tarfile over fsspec (local or s3://). Members with absolute paths or ``..`` are
rejected; a sample without an image or a class, or whose image does not decode, is an error naming
the shard and key (or a counted skip with ``on_bad="skip"``).
"""
from __future__ import annotations

import logging
import lzma
import tarfile
import zlib
from typing import Any, Iterator

import numpy as np

from .. import storage
from .sources.common import MAX_CLASSES, MAX_MEMBER_BYTES, DataError, check_num_classes, is_hidden, resize
from .sources.images import ImageDecodeError, decode, progress, stack
from .types import ImageSet

log = logging.getLogger("ltaug.data")
IMAGE_KEYS = ("png", "jpg", "jpeg")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")   # what tarfile streams (any compression)
# Bookkeeping of a generation output (ltaug.generate): the hidden .ltaug/ folder, else the earlier layout
PLAN_FILES = (".ltaug/plan.json", "_plan.json")
MANIFEST_FILES = (".ltaug/manifest.json", "manifest.json")
PLAN_FILE, MANIFEST_FILE = PLAN_FILES[0], MANIFEST_FILES[0]
# A generation shard's first member: its stats (ltaug.generate.shards.STATS_MEMBER), never a sample
STATS_MEMBER = "__ltaug_stats__"


def _first_existing(uri: str, names: tuple[str, ...]) -> str | None:
    return next((storage.join(uri, n) for n in names if storage.exists(storage.join(uri, n))), None)


class UnsafeShardError(DataError):
    pass


def list_shards(uri: str) -> list[str]:
    """Sorted shard files (``*.tar``, ``*.tar.gz`` / ``.tgz`` / ``.tar.bz2`` / ``.tar.xz``) under a directory /
    prefix, or ``uri`` itself when it is one. A ``.tar.<other>`` that cannot be read is an error, never a
    silent skip."""
    if uri.endswith(SHARD_SUFFIXES):
        return [uri]
    files = [f for f in storage.listdir(uri) if not is_hidden(f)]
    odd = [f for f in files if ".tar." in f.rsplit("/", 1)[-1] and not f.endswith(SHARD_SUFFIXES)]
    if odd:
        raise DataError(f"{odd[0]}: a tar with an unsupported compression ({len(odd)} such file(s) under {uri}); "
                        f"ltaug reads {', '.join(SHARD_SUFFIXES)}: recompress or decompress them")
    return [f for f in files if f.endswith(SHARD_SUFFIXES)]


def _safe_name(name: str, shard: str) -> str:
    if name.startswith("/") or ".." in name.split("/") or "\\" in name:
        raise UnsafeShardError(f"{shard}: member {name!r} has an absolute or parent path; refusing to read")
    return name


END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE  # two zero blocks end every tar (POSIX ustar)


def iter_samples(shard: str) -> Iterator[dict[str, Any]]:
    """Yield ``{"__key__", "__url__", ext: bytes}`` per sample, in tar order (keys must be contiguous); a
    generation shard's stats member (:data:`STATS_MEMBER`) is skipped, never a sample."""
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
                if not member.isfile() or name == STATS_MEMBER:
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
                if ext in current:
                    raise DataError(f"{shard}: member {name!r} repeats key {key!r} and extension {ext!r}; a sample "
                                    f"may hold each member once (the second would silently replace the first)")
                if member.size > MAX_MEMBER_BYTES:
                    raise DataError(f"{shard}: member {name!r} is {member.size} bytes, more than the "
                                    f"{MAX_MEMBER_BYTES}-byte limit (LTAUG_MAX_MEMBER_BYTES)")
                data = tar.extractfile(member)
                current[ext] = data.read() if data is not None else b""
        except tarfile.TarError as e:
            raise DataError(f"{shard}: truncated or corrupt tar ({e})") from None
        except (EOFError, OSError, zlib.error, lzma.LZMAError) as e:   # a truncated / corrupt compressed stream
            if isinstance(e, DataError):
                raise
            raise DataError(f"{shard}: truncated or corrupt compressed tar ({type(e).__name__}: {e})") from None
        # A tar cut exactly at a member boundary reads as a shorter valid tar; every complete tar ends with
        # an end-of-archive marker (two zero blocks) after the last member, so its absence is truncation.
        size = fs.size(path)
        if shard.endswith(".tar") and size < tar.offset + END_OF_ARCHIVE:
            raise DataError(f"{shard}: truncated tar (no end-of-archive marker after {tar.offset} of {size} bytes)")
        if current is not None:
            yield current


def check_manifest(uri: str, shards: list[str]) -> dict[str, Any] | None:
    """The manifest of a generation output at ``uri`` (checked against the shards found), or None.

    A directory with a plan file (``.ltaug/plan.json``, or ``_plan.json`` of earlier versions) is a generation
    output: without a manifest (``.ltaug/manifest.json`` / ``manifest.json``) it is unfinished (a
    killed or running job) and is refused; a manifest not marked complete, or whose shard list differs from
    the shards present, is refused too. A plain directory of shards (no plan, no manifest) is read as it is,
    with a warning saying so."""
    if uri.endswith(SHARD_SUFFIXES):
        log.warning("%s: reading one shard file; no manifest checks that it is complete", uri)
        return None
    man_uri, plan_uri = _first_existing(uri, MANIFEST_FILES), _first_existing(uri, PLAN_FILES)
    if man_uri is None:
        if plan_uri is not None:
            raise DataError(f"{uri}: an unfinished generation output ({plan_uri} but no manifest.json; "
                            f"{len(shards)} shard(s) present): the generate job was killed or is still running. "
                            f"Re-run it with the same config to finish, then read the shards")
        return None
    try:
        man = storage.load_json(storage.read_bytes(man_uri, max_bytes=64 << 20), man_uri)
        listed = {str(e["name"]) for e in man.get("shards", [])}
        complete = bool(man.get("complete"))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{man_uri}: unreadable manifest ({type(e).__name__}: {e})") from None
    if not complete:
        raise DataError(f"{man_uri}: the generation is not complete ({man.get('num_shards')} shard(s) listed); "
                        f"re-run the generate job to finish it")
    found = {f.rsplit("/", 1)[-1] for f in shards}
    if found != listed:
        extra, absent = sorted(found - listed), sorted(listed - found)
        raise DataError(f"{uri}: shards differ from {man_uri} (not listed: {extra[:3]}, missing: {absent[:3]}); "
                        f"run generate --verify, or re-run the generate job")
    return man


class BadSample(DataError):
    """One sample that fails validation; the message names the shard and the key (``on_bad`` decides)."""


def decode_sample(s: dict[str, Any], image_size: int, channels: int, max_label: int, num_classes: int | None = None,
                  with_meta: bool = False) -> tuple[np.ndarray, int, dict]:
    """``(image uint8 [H,W,C], label, parsed json or {})`` of one :func:`iter_samples` record, with the checks of
    :func:`read_shards` (an image and a .cls member, an integer label in ``0..max_label``, an image that decodes);
    :class:`BadSample` naming the shard and key otherwise. Shared by the in-memory and the streaming readers."""
    where = f"{s['__url__']} key {s['__key__']!r}"
    img_ext = next((k for k in IMAGE_KEYS if k in s), None)
    if img_ext is None or "cls" not in s:
        raise BadSample(f"{where}: sample needs an image (.png/.jpg) and a .cls member, has "
                        f"{sorted(k for k in s if not k.startswith('__'))}")
    label = parse_label(s, max_label, num_classes)
    meta: dict = {}
    if with_meta and "json" in s:
        try:
            meta = storage.load_json(s["json"], f"{where}.json")
        except ValueError as e:
            raise BadSample(str(e)) from None
    try:
        img = decode(s[img_ext], where, image_size, channels)
    except ImageDecodeError as e:
        raise BadSample(str(e)) from None
    return img, label, meta


def parse_label(s: dict[str, Any], max_label: int, num_classes: int | None = None) -> int:
    """The integer class of a record's ``.cls`` member, in ``0..max_label``; :class:`BadSample` otherwise."""
    where = f"{s['__url__']} key {s['__key__']!r}"
    if "cls" not in s:
        raise BadSample(f"{where}: sample has no .cls member")
    try:
        text = s["cls"].decode("ascii").strip()
        if not text.lstrip("-").isdigit() or len(text) > 12:
            raise ValueError
        label = int(text)
    except (ValueError, UnicodeDecodeError):
        raise BadSample(f"{where}: .cls is not an integer: {s['cls'][:20]!r}") from None
    if label < 0 or label > max_label:
        raise BadSample(f"{where}: label {label} out of range 0..{max_label}"
                        + ("" if num_classes is not None else " (set data.num_classes / LTAUG_MAX_CLASSES if real)"))
    return label


def read_shards(uri: str, image_size: int, channels: int = 0, on_bad: str = "error",
                num_classes: int | None = None, with_meta: bool = False) -> ImageSet | tuple[ImageSet, list[dict]]:
    """All samples of the shards under ``uri`` as an ImageSet (optionally with their parsed json).

    A generation output is read only when its manifest says it is complete, and the samples read must
    match the manifest's per-class counts (:func:`check_manifest`). Keys need only be unique within a shard
    (a repeated key or member there is an error of :func:`iter_samples`)."""
    shards = list_shards(uri)
    if not shards:
        raise DataError(f"{uri}: no shards ({', '.join(SHARD_SUFFIXES)}) found")
    manifest = check_manifest(uri, shards)
    if num_classes is not None:
        check_num_classes(num_classes, uri)
    max_label = (num_classes if num_classes is not None else MAX_CLASSES) - 1
    images, labels, metas = [], [], []
    skipped = 0

    def bad(msg: str) -> None:
        nonlocal skipped
        if on_bad == "error":
            raise DataError(msg + " (use on_bad_record=skip to skip and count)")
        skipped += 1
        log.warning("skipping: %s", msg)

    total = int((manifest or {}).get("written") or 0) or None
    bar = progress(None, total, f"shards:{uri.rsplit('/', 1)[-1]}", "sample")
    for shard in shards:
        for s in iter_samples(shard):
            bar.update(1)
            try:
                img, label, meta = decode_sample(s, image_size, channels, max_label, num_classes, with_meta)
            except BadSample as e:
                bad(str(e))
                continue
            images.append(img)
            labels.append(label)
            if with_meta:
                metas.append(meta)
    bar.close()
    if skipped:
        log.warning("%s: skipped %d bad sample(s)", uri, skipped)
    if manifest is not None:
        want = list((manifest.get("per_class") or {}).get("kept") or [])
        got = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(want)).tolist() if labels else [0] * len(want)
        if want and got != want and not skipped:
            raise DataError(f"{uri}: the shards hold per-class counts {got} but its manifest says {want}; the "
                            f"output was changed after it was written: run generate --verify")
    elif not uri.endswith(SHARD_SUFFIXES):
        log.warning("%s: no manifest.json: read %d sample(s) from %d shard(s) as they are; nothing checks they are "
                    "complete", uri, len(labels), len(shards))
    arr = stack(images, uri) if images else np.zeros((0, image_size, image_size, max(channels, 1)), np.uint8)
    n_cls = num_classes if num_classes is not None else (max(labels) + 1 if labels else 0)
    if manifest is not None and num_classes is None and manifest.get("per_class", {}).get("kept"):
        n_cls = max(n_cls, len(manifest["per_class"]["kept"]))
    names = tuple(str(i) for i in range(n_cls))
    listed = (manifest or {}).get("class_names")
    if isinstance(listed, list) and len(listed) == n_cls:      # class names travel with a generation output
        names = tuple(str(n) for n in listed)
    out = ImageSet(arr, np.asarray(labels, dtype=np.int64), n_cls, names, f"shards:{uri}", skipped)
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
