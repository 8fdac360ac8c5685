"""Writer side of generation: rows -> WebDataset samples -> one tar per plan shard, published atomically.

A sample is ``<key>.png``, ``<key>.cls`` and a lean ``<key>.json`` holding only what varies per sample
(class, index, id, seed, filter category and distance, minority score); the settings every sample shares
(sampler, guidance, checkpoint digest, filter) are written once, in the plan and the manifest. Tars are
built in memory in the plan's shard order (a seeded interleaving of the classes) with fixed member
metadata (mtime 0), so the same plan shard gives byte-identical tars on every run and every machine.
A shard is published with one atomic write (temp file + rename locally; one PUT on S3): a reader sees the
whole shard or nothing. Its stats (per-class requested / generated / kept / dropped, dropped keys with
their reason) are written *before* the tar, so a published tar always has its stats.

Layout of an output folder: only ``*.tar`` shards at the top, so any WebDataset reader opens it as it is
(``webdataset.WebDataset(tars)``, ``ray.data.read_webdataset(dir)``, Hugging Face
``load_dataset("webdataset", data_dir=dir)``); ltaug's bookkeeping sits in the hidden folder
``.ltaug/`` (``plan.json``, ``manifest.json``, ``stats/<shard>.json``), which every one of those readers
skips (Ray Data's file listing drops relative paths starting with ``.`` or ``_``; ``datasets`` drops hidden
files and folders). Outputs of earlier versions (``_plan.json``, ``manifest.json`` and ``_stats/`` beside
the tars) are still read, resumed and verified; new files always go to ``.ltaug/``.

:class:`ShardProducer` is the per-shard unit of work (generate -> filter -> encode); the local job runs it
in a for-loop, the Ray pipeline in an actor pool. It never writes: :func:`publish_shard` does.
"""
from __future__ import annotations

import base64
import io
import json
import tarfile
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .. import storage
from .plan import GenerationPlan

META_DIR = ".ltaug"                 # hidden: every WebDataset reader skips it
STATS_DIR = f"{META_DIR}/stats"
PLAN_FILE = f"{META_DIR}/plan.json"
MANIFEST_FILE = f"{META_DIR}/manifest.json"
LEGACY_STATS_DIR = "_stats"         # layout of earlier versions, read (never written)
LEGACY_PLAN_FILE = "_plan.json"
LEGACY_MANIFEST_FILE = "manifest.json"
PREVIEW_PER_CLASS = 4  # dropped images kept per class and shard (base64 PNG in its stats) for the generate grid
SAMPLE_KEYS = ("class", "index", "id", "seed", "category", "distance", "minority_score")  # of <key>.json


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    arr = image[..., 0] if image.shape[-1] == 1 else image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def sample_meta(row: dict[str, Any], settings: dict[str, Any] | None = None, plan_digest: str = "") -> dict[str, Any]:
    """The ``<key>.json`` of one row: only what varies per sample (:data:`SAMPLE_KEYS`). ``settings`` and
    ``plan_digest`` are accepted for compatibility and not repeated per sample (they are in the manifest)."""
    def f(v: Any) -> Any:
        if isinstance(v, (np.floating, float)):
            return None if not np.isfinite(v) else round(float(v), 6)
        if isinstance(v, np.integer):
            return int(v)
        if isinstance(v, np.bool_):
            return bool(v)
        return v

    meta = {"class": int(row["label"]), "index": int(row["index"]), "id": int(row["id"]), "seed": int(row["seed"]),
            "category": f(row.get("category", "none")), "distance": f(row.get("distance", float("nan"))),
            "minority_score": f(row.get("minority_score", float("nan")))}
    return meta


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uname = info.gname = "ltaug"
    tar.addfile(info, io.BytesIO(data))


def build_tar(samples: list[tuple[str, dict[str, bytes]]], sort: bool = True) -> bytes:
    """``[(key, {ext: bytes})]`` -> tar bytes, samples in key order (``sort``) or as given, members of a sample
    contiguous and in extension order. Keys must be unique (WebDataset readers group members by key)."""
    if len({k for k, _ in samples}) != len(samples):
        raise ValueError("build_tar: repeated sample key")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in (sorted(samples, key=lambda kv: kv[0]) if sort else samples):
            if "." in key.rsplit("/", 1)[-1]:
                raise ValueError(f"sample key {key!r} contains a dot (WebDataset splits keys at the first dot)")
            for ext in sorted(members):
                _add(tar, f"{key}.{ext}", members[ext])
    return buf.getvalue()


@dataclass
class ShardStats:
    """What happened to the rows of one shard (the manifest is the sum over shards)."""

    shard: int
    name: str
    plan: str
    requested: dict[int, int] = field(default_factory=dict)
    generated: dict[int, int] = field(default_factory=dict)
    kept: dict[int, int] = field(default_factory=dict)
    dropped: dict[int, int] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)
    dropped_keys: dict[str, str] = field(default_factory=dict)   # key -> reason
    # key -> [class, category, distance] of each dropped row: what the ID/AID/OOD plot draws for dropped samples
    dropped_rows: dict[str, list] = field(default_factory=dict)
    # key -> base64 PNG of up to PREVIEW_PER_CLASS dropped images per class: what the generate grid shows
    dropped_preview: dict[str, str] = field(default_factory=dict)
    bytes: int = 0
    seconds: float = 0.0

    def slim(self) -> "ShardStats":
        """The counts only (no per-key lists, no previews): what the driver keeps per shard, so its memory stays
        flat in the number of shards; the full stats stay in ``.ltaug/stats/``."""
        return ShardStats(self.shard, self.name, self.plan, dict(self.requested), dict(self.generated),
                          dict(self.kept), dict(self.dropped), dict(self.categories), bytes=self.bytes,
                          seconds=self.seconds)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for k in ("requested", "generated", "kept", "dropped"):
            d[k] = {str(c): n for c, n in sorted(d[k].items())}
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "ShardStats":
        d = dict(d)
        for k in ("requested", "generated", "kept", "dropped"):
            d[k] = {int(c): int(n) for c, n in d.get(k, {}).items()}
        return ShardStats(**d)


def _count(labels: np.ndarray) -> dict[int, int]:
    u, n = np.unique(np.asarray(labels, dtype=np.int64), return_counts=True)
    return {int(a): int(b) for a, b in zip(u, n)}


Stage = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class ShardProducer:
    """``producer(shard) -> (tar bytes, ShardStats)``: rows of the shard -> generator -> filter -> samples.

    ``generator`` and ``filter`` are batch-dict stages (ImageGenerator, FilterStage or test doubles);
    rows go through them in chunks of ``batch_size``, which never changes any image.
    """

    def __init__(self, plan: GenerationPlan, generator: Stage, filter: Stage | None, batch_size: int,
                 settings: dict[str, Any] | None = None) -> None:
        self.plan, self.generator, self.filter = plan, generator, filter
        self.batch_size = batch_size
        self.settings = dict(settings if settings is not None else plan.settings)

    def __call__(self, shard: int) -> tuple[bytes, ShardStats]:
        import time

        t0 = time.perf_counter()
        ids = self.plan.shard_ids(shard)
        stats = ShardStats(shard, self.plan.shard_name(shard), self.plan.digest)
        samples: list[tuple[str, dict[str, bytes]]] = []
        for a in range(0, len(ids), self.batch_size):
            rows = self.plan.rows(ids[a:a + self.batch_size])
            out = self.generator(rows)
            if self.filter is not None:
                out = self.filter(out)
            n = len(out["label"])
            keep = np.asarray(out.get("keep", np.ones(n, bool)), bool)
            for c, k in _count(rows["label"]).items():
                stats.requested[c] = stats.requested.get(c, 0) + k
            for c, k in _count(out["label"]).items():
                stats.generated[c] = stats.generated.get(c, 0) + k
            for c, k in _count(out["label"][keep]).items():
                stats.kept[c] = stats.kept.get(c, 0) + k
            for c, k in _count(out["label"][~keep]).items():
                stats.dropped[c] = stats.dropped.get(c, 0) + k
            cats = out.get("category", np.array(["none"] * n, dtype=object))
            for cat in cats:
                stats.categories[str(cat)] = stats.categories.get(str(cat), 0) + 1
            reasons = out.get("reason", np.array([""] * n, dtype=object))
            for i in range(n):
                row = {k: v[i] for k, v in out.items() if k != "image" and hasattr(v, "__len__") and len(v) == n}
                if not keep[i]:
                    key, c = str(out["key"][i]), int(out["label"][i])
                    stats.dropped_keys[key] = str(reasons[i]) or "dropped"
                    dist = float(row.get("distance", float("nan")))
                    stats.dropped_rows[key] = [c, str(cats[i]), round(dist, 6) if np.isfinite(dist) else None]
                    shown = sum(1 for k in stats.dropped_preview if stats.dropped_rows[k][0] == c)
                    if shown < PREVIEW_PER_CLASS:
                        stats.dropped_preview[key] = base64.b64encode(encode_png(out["image"][i])).decode()
                    continue
                meta = sample_meta(row, self.settings, self.plan.digest)
                samples.append((str(out["key"][i]), {"png": encode_png(out["image"][i]),
                                                     "cls": str(int(out["label"][i])).encode(),
                                                     "json": json.dumps(meta, sort_keys=True).encode()}))
        data = build_tar(samples, sort=self.plan.order == "class")   # old plans: key order, as before
        stats.bytes = len(data)
        stats.seconds = round(time.perf_counter() - t0, 4)
        return data, stats


def stats_uri(output_uri: str, name: str, legacy: bool = False) -> str:
    return storage.join(output_uri, LEGACY_STATS_DIR if legacy else STATS_DIR, name.replace(".tar", ".json"))


def publish_shard(output_uri: str, data: bytes, stats: ShardStats) -> str:
    """Write the shard's stats, then the tar (the tar's appearance is the shard's commit)."""
    storage.write_bytes(stats_uri(output_uri, stats.name), json.dumps(stats.to_dict(), sort_keys=True).encode())
    uri = storage.join(output_uri, stats.name)
    storage.write_bytes(uri, data)
    return uri


def read_stats(output_uri: str, name: str) -> ShardStats:
    """The stats of a published shard (``.ltaug/stats/``, else the earlier layout's ``_stats/``): one read."""
    uri = stats_uri(output_uri, name)
    try:
        data = storage.read_bytes(uri, max_bytes=64 << 20)
    except FileNotFoundError:
        legacy = stats_uri(output_uri, name, legacy=True)
        if not storage.exists(legacy):
            raise
        uri, data = legacy, storage.read_bytes(legacy, max_bytes=64 << 20)
    return ShardStats.from_dict(storage.load_json(data, uri))


# ------------------------------------------------------------------ retries and shard sizing


class ShardFailedError(RuntimeError):
    """A shard's producer kept raising: the job fails naming the shard (nothing of it was published)."""


def produce_with_retries(producer: Callable[[int], tuple[bytes, ShardStats]], shard: int,
                         retries: int) -> tuple[bytes, ShardStats]:
    """``producer(shard)``, tried again up to ``retries`` times when it raises (a transient fault: a storage
    hiccup, a CUDA launch failure); then :class:`ShardFailedError` naming the shard and the last error. A
    shard is a pure function of the plan, so a retry makes the same bytes."""
    plan = getattr(producer, "plan", None)
    name = plan.shard_name(shard) if plan is not None else f"shard {shard}"
    for attempt in range(retries + 1):
        try:
            return producer(shard)
        except Exception as e:  # noqa: BLE001 - any application error of the producer is retried, then named
            last = e
    raise ShardFailedError(f"generate: shard {shard} ({name}) failed {retries + 1} time(s) "
                           f"(generate.max_shard_retries={retries}); last error: {type(last).__name__}: {last}")


TAR_BLOCK = 512


def estimate_sample_bytes(image_size: int, channels: int) -> int:
    """Upper estimate of one sample's bytes in a shard tar: a 512-byte header per member (png, cls, json),
    each member padded to 512 bytes; the PNG at its incompressible size (``H*(W*C+1)`` + 100 header bytes;
    generated images compress little at ``compress_level=1``), a ``.cls`` and a ``.json`` under 512 bytes.
    8x8x1 -> 3072 bytes, 32x32x3 -> 6144 (measured in the tars: benchmarks/bench_scale.py)."""
    pad = lambda n: -(-n // TAR_BLOCK) * TAR_BLOCK  # noqa: E731
    png = image_size * (image_size * channels + 1) + 100
    return 3 * TAR_BLOCK + pad(png) + TAR_BLOCK + TAR_BLOCK


def samples_per_shard(target_mb: float, image_size: int, channels: int) -> int:
    """``generate.shard_target_mb`` -> samples per shard (>= 1): the target over :func:`estimate_sample_bytes`.

    The shard stays the unit of work, retry and atomic commit (an S3 object cannot be appended to
    atomically), so a bigger target means more work lost per killed worker: at 32x32x3 a 256 MB shard is
    ~43.7k samples, i.e. the ~minutes of one GPU's sampling; pick the target for the readers (>= 100 MB per
    object on S3), the retry cost follows."""
    return max(1, int(target_mb * (1 << 20)) // estimate_sample_bytes(image_size, channels))


__all__ = ["ShardProducer", "ShardStats", "build_tar", "encode_png", "sample_meta", "publish_shard",
           "read_stats", "stats_uri", "ShardFailedError", "produce_with_retries", "estimate_sample_bytes",
           "samples_per_shard", "META_DIR", "STATS_DIR", "PLAN_FILE", "MANIFEST_FILE", "LEGACY_STATS_DIR",
           "LEGACY_PLAN_FILE", "LEGACY_MANIFEST_FILE", "SAMPLE_KEYS"]
