"""Writer side of generation: rows -> WebDataset samples -> one tar per plan shard, published atomically.

A sample is ``<key>.png``, ``<key>.cls`` and a lean ``<key>.json`` holding only what varies per sample
(class, index, id, seed, filter category and distance, minority score); the settings every sample shares
(sampler, guidance, checkpoint digest, filter) are written once, in the plan and the manifest. Tars are
built in memory in the plan's shard order (a seeded interleaving of the classes) with fixed member
metadata (mtime 0), so the same plan shard gives byte-identical tars on every run and every machine.
A shard is published with one atomic write (temp file + rename locally; one PUT on S3): a reader sees the
whole shard or nothing. Its stats (per-class requested / generated / kept / dropped, dropped keys with
their reason and previews) are the tar's FIRST member, :data:`STATS_MEMBER` (``__ltaug_stats__``), so a
published tar always has its stats and a shard costs one PUT (S3 user metadata, 2 KB, is too small for
dropped keys and previews). WebDataset readers skip that member (its name matches webdataset's
``skip_meta``; see :data:`STATS_MEMBER`); :func:`read_stats` reads it with two ranged reads.

Layout of an output folder: only ``*.tar`` shards at the top, so any WebDataset reader opens it as it is
(``webdataset.WebDataset(tars)``, ``ray.data.read_webdataset(dir)``, Hugging Face
``load_dataset("webdataset", data_dir=dir)``); ltaug's bookkeeping sits in the hidden folder
``.ltaug/`` (``plan.json``, ``manifest.json``), which every one of those readers
skips (Ray Data's file listing drops relative paths starting with ``.`` or ``_``; ``datasets`` drops hidden
files and folders). Outputs of earlier versions (stats in ``.ltaug/stats/<shard>.json``; or ``_plan.json``,
``manifest.json`` and ``_stats/`` beside the tars) are still read, resumed and verified; new files always go
to ``.ltaug/`` and new stats into the tar.

:class:`ShardProducer` is the per-shard unit of work in two parts: :meth:`ShardProducer.sample` (generate
and the filter's model part -> a :data:`RawShard` of uint8 arrays) and :func:`encode_shard` (the filter's
keep decision, PNG encoding, the tar with its stats first). The local job runs both in a for-loop; the Ray
pipeline runs ``sample`` in the sampler actors and ``encode_shard`` + publish in a CPU stage that overlaps
them. Neither writes: :func:`publish_shard` does.
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
# The stats member, first in every tar written since one-PUT shards. WebDataset's reader skips it: webdataset
# 1.x tariterators.tar_file_iterator, ``skip_meta=r"__[^/]*__($|/)"`` and the check just above it
# (``"/" not in fname and fname.startswith("__") and fname.endswith("__")``: "skipping metadata for now");
# Ray Data's and Hugging Face's readers drop it as a name without an extension (no sample key), and so does
# ltaug.data.shards.iter_samples, which skips it explicitly.
STATS_MEMBER = "__ltaug_stats__"
MAX_STATS_BYTES = 64 << 20
TAR_BLOCK = 512
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


def _member(name: str, data: bytes) -> bytes:
    """One ustar member: header (mtime 0, fixed owner) + data padded to 512 bytes (what ``tarfile`` writes)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uname = info.gname = "ltaug"
    return info.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape") + data + b"\0" * (-len(data) % TAR_BLOCK)


def _close(body: bytes) -> bytes:
    """End-of-archive (two zero blocks), then zeros up to a whole record, as ``tarfile.close`` does."""
    n = len(body) + 2 * TAR_BLOCK
    return body + b"\0" * (2 * TAR_BLOCK + (-n % tarfile.RECORDSIZE))


def build_tar(samples: list[tuple[str, dict[str, bytes]]], sort: bool = True,
              stats: "ShardStats | None" = None) -> bytes:
    """``[(key, {ext: bytes})]`` -> tar bytes, samples in key order (``sort``) or as given, members of a sample
    contiguous and in extension order. Keys must be unique (WebDataset readers group members by key).

    With ``stats`` the tar starts with the :data:`STATS_MEMBER` (``stats.bytes`` is set to the tar's final
    size, which the member records: a fixed point, reached in a step or two)."""
    if len({k for k, _ in samples}) != len(samples):
        raise ValueError("build_tar: repeated sample key")
    parts = []
    for key, members in (sorted(samples, key=lambda kv: kv[0]) if sort else samples):
        if "." in key.rsplit("/", 1)[-1]:
            raise ValueError(f"sample key {key!r} contains a dot (WebDataset splits keys at the first dot)")
        if key == STATS_MEMBER:
            raise ValueError(f"sample key {key!r} is reserved for the shard's stats")
        for ext in sorted(members):
            parts.append(_member(f"{key}.{ext}", members[ext]))
    body = b"".join(parts)
    if stats is None:
        return _close(body)
    size = 0
    while True:                     # the size grows with its own digits only: non-decreasing, bounded
        stats.bytes = size
        data = _close(_member(STATS_MEMBER, stats_json(stats)) + body)
        if len(data) == size:
            return data
        size = len(data)


def stats_json(stats: "ShardStats") -> bytes:
    """The stats member's bytes: deterministic (no wall-clock ``seconds``), so a shard stays a pure function
    of its plan shard and a re-run writes the same bytes."""
    d = stats.to_dict()
    d.pop("seconds", None)
    return json.dumps(d, sort_keys=True).encode()


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
        flat in the number of shards; the full stats stay in the shard's stats member."""
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
# What the sampler hands the encoder for one shard (picklable; crosses the Ray object store): ``shard``,
# ``name``, ``plan`` (digest), ``sort`` (bool), ``requested`` ({class: n}), ``seconds`` (sampling time),
# ``decide`` (filter.keep when the filter's keep decision is still to be made, else None) and ``rows``:
# column -> array over the shard's rows (``image`` uint8 [N,H,W,C], ``label``, ``key``, ``id``, ``index``,
# ``seed``, optional ``minority_score``, ``category``, ``distance``, and ``keep`` / ``reason`` when decided).
RawShard = dict[str, Any]


class ShardProducer:
    """``producer(shard) -> (tar bytes, ShardStats)``: rows of the shard -> generator -> filter -> samples.

    ``generator`` and ``filter`` are batch-dict stages (ImageGenerator, FilterStage or test doubles);
    rows go through them in chunks of ``batch_size``, which never changes any image. The work splits in
    :meth:`sample` (the model work) and :func:`encode_shard` (CPU only); ``__call__`` runs both.
    """

    def __init__(self, plan: GenerationPlan, generator: Stage, filter: Stage | None, batch_size: int,
                 settings: dict[str, Any] | None = None) -> None:
        self.plan, self.generator, self.filter = plan, generator, filter
        self.batch_size = batch_size
        self.settings = dict(settings if settings is not None else plan.settings)

    def __call__(self, shard: int) -> tuple[bytes, ShardStats]:
        return encode_shard(self.sample(shard))

    def sample(self, shard: int) -> RawShard:
        """Generate the shard's rows and run the filter's model part (``filter.measure`` when it has one, else
        the whole filter); no PNG, no tar."""
        import time

        t0 = time.perf_counter()
        ids = self.plan.shard_ids(shard)
        flt = self.filter
        measure = getattr(flt, "measure", None)
        requested: dict[int, int] = {}
        chunks: list[dict[str, np.ndarray]] = []
        for a in range(0, len(ids), self.batch_size):
            rows = self.plan.rows(ids[a:a + self.batch_size])
            for c, k in _count(rows["label"]).items():
                requested[c] = requested.get(c, 0) + k
            out = self.generator(rows)
            if flt is not None:
                out = measure(out) if measure is not None else flt(out)
            n = len(out["label"])
            chunks.append({k: np.asarray(v) for k, v in out.items()
                           if hasattr(v, "__len__") and not isinstance(v, (str, bytes)) and len(v) == n})
        cols = set.intersection(*(set(c) for c in chunks)) if chunks else set()
        rows_all = {k: np.concatenate([c[k] for c in chunks]) for k in sorted(cols)}
        decide = None
        if measure is not None and "keep" not in rows_all:
            decide = tuple(flt.decision_keep())
        return {"shard": int(shard), "name": self.plan.shard_name(shard), "plan": self.plan.digest,
                "sort": self.plan.order == "class", "requested": requested, "decide": decide, "rows": rows_all,
                "seconds": time.perf_counter() - t0}


def encode_shard(raw: RawShard) -> tuple[bytes, ShardStats]:
    """A :data:`RawShard` -> ``(tar bytes, ShardStats)``: the filter's keep decision (when still to make), the
    per-class counts, the dropped rows and previews, PNG encoding and the tar with its stats member first.
    CPU only and pure: the same raw shard gives the same bytes."""
    import time

    from .filter_stage import decide_keep

    t0 = time.perf_counter()
    out = dict(raw["rows"])
    stats = ShardStats(int(raw["shard"]), str(raw["name"]), str(raw["plan"]))
    stats.requested = {int(c): int(k) for c, k in raw["requested"].items()}
    n = len(out.get("label", ()))
    if n and raw.get("decide") is not None:
        out.update(decide_keep(out["category"], raw["decide"]))
    labels = np.asarray(out.get("label", np.zeros(0, np.int64)), np.int64)
    keep = np.asarray(out.get("keep", np.ones(n, bool)), bool)
    stats.generated, stats.kept, stats.dropped = _count(labels), _count(labels[keep]), _count(labels[~keep])
    cats = out.get("category", np.array(["none"] * n, dtype=object))
    for cat in cats:
        stats.categories[str(cat)] = stats.categories.get(str(cat), 0) + 1
    reasons = out.get("reason", np.array([""] * n, dtype=object))
    samples: list[tuple[str, dict[str, bytes]]] = []
    for i in range(n):
        row = {k: v[i] for k, v in out.items() if k != "image"}
        key, c = str(out["key"][i]), int(labels[i])
        if not keep[i]:
            stats.dropped_keys[key] = str(reasons[i]) or "dropped"
            dist = float(row.get("distance", float("nan")))
            stats.dropped_rows[key] = [c, str(cats[i]), round(dist, 6) if np.isfinite(dist) else None]
            shown = sum(1 for k in stats.dropped_preview if stats.dropped_rows[k][0] == c)
            if shown < PREVIEW_PER_CLASS:
                stats.dropped_preview[key] = base64.b64encode(encode_png(out["image"][i])).decode()
            continue
        meta = sample_meta(row)
        samples.append((key, {"png": encode_png(out["image"][i]), "cls": str(c).encode(),
                              "json": json.dumps(meta, sort_keys=True).encode()}))
    data = build_tar(samples, sort=bool(raw["sort"]), stats=stats)     # old plans: key order, as before
    stats.seconds = round(float(raw.get("seconds", 0.0)) + time.perf_counter() - t0, 4)
    return data, stats


class StatsMissingError(ValueError):
    """A shard without readable stats (a hand-made or foreign tar, or a damaged one): named, never a crash."""


def stats_uri(output_uri: str, name: str, legacy: bool = False) -> str:
    """Where earlier versions kept a shard's stats (``.ltaug/stats/``, or ``_stats/``): read, never written."""
    return storage.join(output_uri, LEGACY_STATS_DIR if legacy else STATS_DIR, name.replace(".tar", ".json"))


def _stats_header(head: bytes, where: str) -> tarfile.TarInfo | None:
    """The first member's header when it is the stats member, else None; a header that does not parse is a
    :class:`StatsMissingError` naming ``where``."""
    if len(head) < TAR_BLOCK:
        raise StatsMissingError(f"{where}: {len(head)} bytes, too short for a tar with its stats member")
    try:
        info = tarfile.TarInfo.frombuf(head[:TAR_BLOCK], tarfile.ENCODING, "surrogateescape")
    except tarfile.TarError as e:
        raise StatsMissingError(f"{where}: not a tar (first header unreadable: {e})") from None
    return info if info.name == STATS_MEMBER and info.isfile() else None


def publish_shard(output_uri: str, data: bytes, stats: ShardStats) -> str:
    """Write the shard's tar, its stats member first: one atomic write, one PUT (its appearance is the
    shard's commit). A tar without the stats member is refused (a resume could not account for it)."""
    uri = storage.join(output_uri, stats.name)
    if _stats_header(data[:TAR_BLOCK], uri) is None:
        raise StatsMissingError(f"{uri}: refusing to publish a shard whose first member is not {STATS_MEMBER} "
                                f"(build it with build_tar(..., stats=...))")
    storage.write_bytes(uri, data)
    return uri


def read_stats(output_uri: str, name: str) -> ShardStats:
    """The stats of a published shard: its first tar member (the 512-byte header, then exactly the member's
    bytes: two ranged reads); for outputs of earlier versions ``.ltaug/stats/<shard>.json``, else
    ``_stats/<shard>.json``. :class:`StatsMissingError` naming the shard when it has none of them (a
    hand-made tar); ``FileNotFoundError`` when the shard itself is absent."""
    return read_stats_from(output_uri, name)[0]


def read_stats_from(output_uri: str, name: str) -> tuple[ShardStats, bool]:
    """:func:`read_stats` and whether they came from the tar's own first member (whose header then parsed as a
    tar header: a caller checking the shard needs not read it again)."""
    uri = storage.join(output_uri, name)
    info = _stats_header(storage.read_range(uri, 0, TAR_BLOCK), uri)
    if info is not None:
        if info.size > MAX_STATS_BYTES:
            raise StatsMissingError(f"{uri}: stats member of {info.size} bytes, more than {MAX_STATS_BYTES}")
        data = storage.read_range(uri, TAR_BLOCK, TAR_BLOCK + info.size)
        if len(data) != info.size:
            raise StatsMissingError(f"{uri}: stats member truncated ({len(data)} of {info.size} bytes)")
        where = f"{uri} member {STATS_MEMBER}"
    else:
        for legacy in (False, True):
            where = stats_uri(output_uri, name, legacy)
            try:
                data = storage.read_bytes(where, max_bytes=MAX_STATS_BYTES)
                break
            except FileNotFoundError:
                continue
        else:
            raise StatsMissingError(f"{uri}: first tar member is not {STATS_MEMBER} and there is no "
                                    f"{stats_uri(output_uri, name)} (earlier layout) either: not a shard "
                                    f"written by ltaug generate (hand-made or foreign tar?)")
    try:
        return ShardStats.from_dict(storage.load_json(data, where)), info is not None
    except (TypeError, AttributeError) as e:
        raise StatsMissingError(f"{where}: unreadable shard stats ({type(e).__name__}: {e})") from None


# ------------------------------------------------------------------ retries and shard sizing


class ShardFailedError(RuntimeError):
    """A shard's producer kept raising: the job fails naming the shard (nothing of it was published)."""


def retry_shard(fn: Callable[[], Any], shard: int, name: str, retries: int) -> Any:
    """``fn()``, tried again up to ``retries`` times when it raises (a transient fault: a storage hiccup, a
    CUDA launch failure); then :class:`ShardFailedError` naming the shard and the last error."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - any application error is retried, then named
            last = e
    raise ShardFailedError(f"generate: shard {shard} ({name}) failed {retries + 1} time(s) "
                           f"(generate.max_shard_retries={retries}); last error: {type(last).__name__}: {last}")


def shard_label(producer: Any, shard: int) -> str:
    plan = getattr(producer, "plan", None)
    return plan.shard_name(shard) if plan is not None else f"shard {shard}"


def produce_with_retries(producer: Callable[[int], tuple[bytes, ShardStats]], shard: int,
                         retries: int) -> tuple[bytes, ShardStats]:
    """``producer(shard)`` under :func:`retry_shard`. A shard is a pure function of the plan, so a retry makes
    the same bytes."""
    return retry_shard(lambda: producer(shard), shard, shard_label(producer, shard), retries)


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


__all__ = ["ShardProducer", "ShardStats", "RawShard", "encode_shard", "StatsMissingError", "STATS_MEMBER",
           "retry_shard", "shard_label", "stats_json", "build_tar", "encode_png", "sample_meta", "publish_shard",
           "read_stats", "read_stats_from", "stats_uri", "ShardFailedError", "produce_with_retries", "estimate_sample_bytes",
           "samples_per_shard", "META_DIR", "STATS_DIR", "PLAN_FILE", "MANIFEST_FILE", "LEGACY_STATS_DIR",
           "LEGACY_PLAN_FILE", "LEGACY_MANIFEST_FILE", "SAMPLE_KEYS"]
