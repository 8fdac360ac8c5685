"""Synthetic shards streamed into classifier training: a small spec on the driver, the images only in workers.

The driver calls :func:`plan_synthetic`: it reads the shard list and per-shard per-class counts (a generation
output's ``.ltaug/stats/<shard>.json``; shards written without stats get one counting pass that streams them
and keeps only counts), computes the per-class quotas of :func:`quotas` (``classifier.synthetic_max_per_class``,
``synthetic_fill_to``: the same numbers as ``select_synthetic``) and turns them into per-shard keep counts: the
first ``q_c`` samples of class c in shard order. The resulting :class:`SyntheticSpec` (a few numbers per shard)
is what ``Task.payload`` carries; it never holds an image.

Each training worker builds a :class:`SyntheticStream` over the spec: per epoch a seeded permutation of the
shard order, shard i of it read by rank ``i % world_size`` (webdataset's ``split_by_node``; with fewer shards
than ranks every rank reads all shards and keeps every ``world_size``-th kept sample), each shard decoded
sample by sample with ``read_shards``' validation (:func:`ltaug.data.shards.decode_sample`: errors name the
shard and key) and the keep counts applied in tar order, through a bounded shuffle buffer seeded by
``(seed, epoch, rank)``. The kept set of an epoch is the same for every world size; its order is not.

Why an in-worker reader and not Ray Data ``read_webdataset``: the classifier worker is one function for
every launcher (in-process and Ray Train), and ``ltaug/distributed/train.py`` hands it the task unchanged;
each Ray worker reads its own shards straight from storage (local or ``s3://``) like ``split_by_node``, so
nothing is collected on the driver and no Ray Data pipeline has to be threaded through the launcher.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from ..data.shards import (BadSample, DataError, check_manifest, decode_sample, iter_samples, list_shards,
                           parse_label)
from ..data.sources.common import MAX_CLASSES, check_num_classes

log = logging.getLogger("ltaug.classify")
SHUFFLE_BUFFER = 512        # samples held by a worker's shuffle buffer (bounded memory)
EMPTY_EPOCHS_MAX = 10_000   # a rank that gets no sample in this many epochs in a row is an error, not a hang


def quotas(available: np.ndarray, real_counts: Any, max_per_class: int = 0, fill_to: int = 0) -> np.ndarray:
    """Per-class synthetic quota ``q_c = min(S_c, max_per_class, fill_to - n_c)`` (a 0 switches a cap off);
    the numbers ``select_synthetic`` keeps."""
    avail = np.asarray(available, dtype=np.int64)
    real = np.asarray(getattr(real_counts, "counts", real_counts), dtype=np.int64)
    q = avail.copy()
    for c in range(len(q)):
        if max_per_class:
            q[c] = min(q[c], max_per_class)
        if fill_to:
            q[c] = min(q[c], max(0, fill_to - int(real[c])) if c < len(real) else fill_to)
    return q


def keep_counts(per_shard: np.ndarray, quota: np.ndarray) -> np.ndarray:
    """``[S,K]`` per-shard keep counts: the first ``quota[c]`` samples of class c, shards in the given order."""
    per_shard = np.asarray(per_shard, dtype=np.int64)
    before = np.cumsum(per_shard, axis=0) - per_shard           # samples of class c in earlier shards
    return np.clip(np.asarray(quota, np.int64)[None, :] - before, 0, per_shard)


@dataclass(frozen=True)
class ShardEntry:
    uri: str
    counts: tuple[int, ...]          # valid samples per class (after a filter's exclusions)
    keep: tuple[int, ...]            # of them, the first keep[c] of class c in tar order are used
    exclude: tuple[int, ...] = ()    # record ordinals (tar order) dropped by a filter
    from_stats: bool = False         # counts from the generation stats: checked while reading


@dataclass(frozen=True)
class SyntheticSpec:
    """What a worker needs to stream the selected synthetic set; small (pickled size ~ shards x classes)."""

    uri: str
    image_size: int
    channels: int
    num_classes: int
    on_bad: str
    shards: tuple[ShardEntry, ...]
    class_names: tuple[str, ...] = ()
    read: int = 0                    # samples available before the quotas (after any filter)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def kept_counts(self) -> np.ndarray:
        return np.sum([s.keep for s in self.shards], axis=0, dtype=np.int64) if self.shards else \
            np.zeros(self.num_classes, np.int64)

    def __len__(self) -> int:
        return int(self.kept_counts.sum())

    def labels_like(self) -> np.ndarray:
        """Labels of the kept set in class order (counts only; for histograms and the loss methods)."""
        return np.repeat(np.arange(self.num_classes), self.kept_counts)


# ------------------------------------------------------------------------------------------- driver


def _stats_counts(uri: str, shards: list[str], manifest: dict[str, Any], K: int) -> np.ndarray | None:
    from ..generate.shards import read_stats

    try:
        rows = [read_stats(uri, s.rsplit("/", 1)[-1]).kept for s in shards]
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s: shard stats unreadable (%s: %s); counting the shards instead", uri, type(e).__name__, e)
        return None
    out = np.zeros((len(shards), K), np.int64)
    for i, kept in enumerate(rows):
        for c, n in kept.items():
            if not 0 <= c < K:
                raise DataError(f"{shards[i]}: its stats count class {c}, outside 0..{K - 1}")
            out[i, c] = n
    want = list((manifest.get("per_class") or {}).get("kept") or [])
    if want and out.sum(0)[:len(want)].tolist() != want[:K]:
        raise DataError(f"{uri}: the shard stats sum to per-class counts {out.sum(0).tolist()} but its manifest "
                        f"says {want}; run generate --verify")
    return out


def scan_shard(shard: str, image_size: int, channels: int, K: int, on_bad: str,
               fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
               batch: int = 256) -> tuple[np.ndarray, list[int], dict[str, list]]:
    """One streaming pass over a shard: ``(valid per-class counts, excluded ordinals, per-sample rows)``.

    ``fn(images uint8 [B,H,W,C], labels [B]) -> keep [B] bool`` (a filter) sees batches of ``batch`` images;
    only counts, the excluded ordinals and the labels / ordinals of valid samples are kept."""
    counts = np.zeros(K, np.int64)
    excluded: list[int] = []
    rows: dict[str, list] = {"label": [], "keep": []}
    buf_img: list[np.ndarray] = []
    buf_row: list[tuple[int, int]] = []

    def flush() -> None:
        if not buf_row:
            return
        labels = np.asarray([r[1] for r in buf_row], np.int64)
        keep = np.asarray(fn(np.stack(buf_img), labels), bool) if fn is not None else np.ones(len(labels), bool)
        for (j, c), k in zip(buf_row, keep):
            rows["label"].append(c)
            rows["keep"].append(bool(k))
            if k:
                counts[c] += 1
            else:
                excluded.append(j)
        buf_img.clear(), buf_row.clear()

    for j, s in enumerate(iter_samples(shard)):
        try:
            img, label, _ = decode_sample(s, image_size, channels, K - 1, K)
        except BadSample as e:
            if on_bad == "error":
                raise DataError(f"{e} (use on_bad_record=skip to skip and count)") from None
            log.warning("skipping: %s", e)
            continue
        buf_img.append(img), buf_row.append((j, label))
        if len(buf_row) >= batch:
            flush()
    flush()
    return counts, excluded, rows


def plan_synthetic(uri: str, real_counts: Any, *, image_size: int, channels: int, num_classes: int,
                   max_per_class: int = 0, fill_to: int = 0, on_bad: str = "error",
                   score: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                   on_rows: Callable[[str, dict[str, list]], None] | None = None) -> SyntheticSpec:
    """The :class:`SyntheticSpec` of the shards under ``uri`` with the configured quotas (see the module doc).

    ``score`` (optional ``fn(images, labels) -> keep``, e.g. the ID/AID/OOD filter) makes this one streaming
    pass over every shard; the samples it rejects are excluded by ordinal. ``on_rows(shard, rows)`` sees each
    shard's per-sample results of that pass (for plots); images are never kept."""
    shards = list_shards(uri)
    if not shards:
        raise DataError(f"{uri}: no shards found")
    manifest = check_manifest(uri, shards)
    K = num_classes
    check_num_classes(K, uri)
    if K > MAX_CLASSES:
        raise DataError(f"{uri}: {K} classes, more than LTAUG_MAX_CLASSES={MAX_CLASSES}")
    per_shard = _stats_counts(uri, shards, manifest, K) if (manifest is not None and score is None) else None
    from_stats = per_shard is not None
    excluded: list[tuple[int, ...]] = [()] * len(shards)
    if per_shard is None:         # a counting (or scoring) pass that streams and keeps only counts
        per_shard = np.zeros((len(shards), K), np.int64)
        for i, shard in enumerate(shards):
            per_shard[i], ex, rows = scan_shard(shard, image_size, channels, K, on_bad, score)
            excluded[i] = tuple(ex)
            if on_rows is not None:
                on_rows(shard, rows)
        if manifest is None and not uri.endswith((".tar", ".tgz", ".gz", ".bz2", ".xz")):
            log.warning("%s: no manifest.json: counted %d sample(s) in %d shard(s) as they are; nothing checks "
                        "they are complete", uri, int(per_shard.sum()), len(shards))
    q = quotas(per_shard.sum(0), real_counts, max_per_class, fill_to)
    keep = keep_counts(per_shard, q)
    entries = tuple(ShardEntry(s, tuple(int(v) for v in per_shard[i]), tuple(int(v) for v in keep[i]),
                               excluded[i], from_stats) for i, s in enumerate(shards))
    names = tuple(str(i) for i in range(K))
    listed = (manifest or {}).get("class_names")
    if isinstance(listed, list) and len(listed) == K:
        names = tuple(str(n) for n in listed)
    return SyntheticSpec(uri, image_size, channels, K, on_bad, entries, names, int(per_shard.sum()),
                         {"counts_from": "stats" if from_stats else "scan"})


# ------------------------------------------------------------------------------------------- worker


def read_kept(entry: ShardEntry, spec: SyntheticSpec) -> Iterator[tuple[np.ndarray, int]]:
    """``(image uint8 [H,W,C], label)`` of the kept samples of one shard, in tar order (the whole shard is
    read, so a shard that differs from its stats is caught)."""
    K = spec.num_classes
    left = np.asarray(entry.keep, np.int64).copy()
    seen = np.zeros(K, np.int64)
    excluded = set(entry.exclude)
    skipped = 0
    for j, s in enumerate(iter_samples(entry.uri)):
        if j in excluded:
            continue
        try:
            label = parse_label(s, K - 1, K)
            if left[label] <= 0:           # beyond the quota: validated label, image not decoded
                seen[label] += 1
                continue
            img, label, _ = decode_sample(s, spec.image_size, spec.channels, K - 1, K)
        except BadSample as e:
            if spec.on_bad == "error":
                raise DataError(f"{e} (use on_bad_record=skip to skip and count)") from None
            skipped += 1
            log.warning("skipping: %s", e)
            continue
        seen[label] += 1
        left[label] -= 1
        yield img, label
    if spec.on_bad == "error" and seen.tolist() != list(entry.counts):
        raise DataError(f"{entry.uri}: holds per-class counts {seen.tolist()} but "
                        f"{'its stats say' if entry.from_stats else 'the counting pass found'} "
                        f"{list(entry.counts)}; the shard changed after it was listed: run generate --verify")
    if left.any():
        log.warning("%s: %d kept sample(s) missing (skipped as bad): the quota is short", entry.uri, int(left.sum()))


def _mix(*v: int) -> float:
    """A uniform in [0, 1) as a pure function of integers (splitmix64)."""
    x = 0x9E3779B97F4A7C15
    for a in v:
        x = (x ^ (int(a) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return (x >> 11) / float(1 << 53)


class SyntheticStream:
    """This rank's endless, epoch-wise stream of kept synthetic samples (see the module doc).

    ``accept`` (per class, in [0,1]) thins the stream class-wise with a deterministic coin per (epoch, shard,
    sample): how class-balanced re-sampling reaches the synthetic part without holding it. ``take(n, at)``
    returns the ``n`` samples after the first ``at`` of this rank's stream: a pure function of ``at``, so a
    resumed run (restarted at a later step) replays to the same position and continues identically.
    """

    def __init__(self, spec: SyntheticSpec, rank: int = 0, world_size: int = 1, seed: int = 0,
                 buffer: int = SHUFFLE_BUFFER, accept: np.ndarray | None = None) -> None:
        if not len(spec):
            raise ValueError(f"{spec.uri}: no synthetic sample is kept; nothing to stream")
        self.spec, self.rank, self.world_size, self.seed, self.buffer = spec, rank, world_size, seed, buffer
        self.accept = None if accept is None else np.asarray(accept, np.float64)
        self._it: Iterator[tuple[np.ndarray, int]] | None = None
        self._pos = 0

    def shard_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, 7]).permutation(len(self.spec.shards))

    def by_sample(self) -> bool:
        """True when there are fewer shards than ranks: every rank reads all shards, keeps its share of samples."""
        return len(self.spec.shards) < self.world_size

    def epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, int]]:
        """The kept samples this rank gets in ``epoch``, through the seeded bounded shuffle buffer."""
        order = self.shard_order(epoch)
        mine = order if self.by_sample() else order[self.rank::self.world_size]
        rng = np.random.default_rng([self.seed, epoch, self.rank, 11])
        buf: list[tuple[np.ndarray, int]] = []
        j = 0
        for si in mine:
            for o, item in enumerate(read_kept(self.spec.shards[si], self.spec)):
                if self.by_sample():
                    j += 1
                    if (j - 1) % self.world_size != self.rank:
                        continue
                if self.accept is not None and _mix(self.seed, epoch, int(si), o) >= self.accept[item[1]]:
                    continue
                if len(buf) < self.buffer:
                    buf.append(item)
                    continue
                k = int(rng.integers(len(buf)))
                yield buf[k]
                buf[k] = item
        for k in rng.permutation(len(buf)):
            yield buf[k]

    def _endless(self) -> Iterator[tuple[np.ndarray, int]]:
        e = empty = 0
        while True:
            n = 0
            for item in self.epoch(e):
                n += 1
                yield item
            empty = 0 if n else empty + 1
            if empty >= EMPTY_EPOCHS_MAX:
                raise DataError(f"{self.spec.uri}: rank {self.rank} of {self.world_size} got no synthetic sample in "
                                f"{empty} epochs (too few non-empty shards for the world size)")
            e += 1

    def take(self, n: int, at: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(images uint8 [n,H,W,C], labels [n])``: samples ``at .. at+n`` of this rank's stream."""
        at = self._pos if at is None else at
        if self._it is None or at < self._pos:
            self._it, self._pos = self._endless(), 0
        while self._pos < at:           # resume: replay to the position (deterministic)
            next(self._it)
            self._pos += 1
        items = [next(self._it) for _ in range(n)]
        self._pos += n
        s = self.spec
        imgs = np.stack([i for i, _ in items]) if items else np.zeros((0, s.image_size, s.image_size, s.channels), np.uint8)
        return imgs, np.asarray([c for _, c in items], np.int64)


def sample_set(spec: SyntheticSpec, limit: int):
    """At most ``limit`` kept samples (shards in order) as an ``ImageSet``: for plots and generative metrics of
    a large synthetic set (a bounded sample; the whole set when it is smaller)."""
    from ..data.types import ImageSet

    imgs: list[np.ndarray] = []
    labels: list[int] = []
    for entry in spec.shards:
        if len(labels) >= limit:
            break
        for img, c in read_kept(entry, spec):
            if len(labels) >= limit:
                break
            imgs.append(img), labels.append(c)
    arr = np.stack(imgs) if imgs else np.zeros((0, spec.image_size, spec.image_size, spec.channels), np.uint8)
    return ImageSet(arr, np.asarray(labels, np.int64), spec.num_classes, spec.class_names, f"shards:{spec.uri}")


__all__ = ["SyntheticSpec", "ShardEntry", "SyntheticStream", "plan_synthetic", "quotas", "keep_counts",
           "scan_shard", "read_kept", "sample_set", "SHUFFLE_BUFFER"]
