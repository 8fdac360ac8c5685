"""Output bookkeeping of generation: the plan file, the manifest, resume and ``verify``.

An output directory (local or s3://) holds the ``gen-<digest8>-<shard>.tar`` shards and nothing else a
reader would open; the bookkeeping is in the hidden ``.ltaug/`` folder: ``plan.json`` (the plan and its
digest) and, once every shard is published, ``manifest.json`` (per-class requested / generated / kept /
dropped, class names, the shared settings); each shard's stats are its own first tar member
(``__ltaug_stats__``, :func:`~ltaug.generate.shards.read_stats`). Outputs of earlier versions (stats in
``.ltaug/stats/<shard>.json``; ``_plan.json``, ``_stats/``, ``manifest.json`` beside the tars) are read,
resumed and verified. A directory belongs to one plan:
resuming the same plan skips published shards; a different plan is refused with an error naming the
existing digest. :func:`verify` checks an output against its plan: every planned id present exactly once
(kept in a shard, or dropped with a reason), no duplicates, no foreign keys, every shard a valid tar
whose members decode (:mod:`.verify`, one task per shard on a cluster).

Refill rounds (``generate.max_rounds``) are further plans of the root plan, each claimed exclusively in
``.ltaug/rounds/round-<r>.json`` before any of its shards; the output holds the shards of every round and the
manifest sums them, with the rounds and each class's shortfall against its target.

At scale (10M images, 40k shards): a resume lists the output once (:func:`list_shards`, names and sizes) and
reads the published shards' stats concurrently (:data:`IO_WORKERS` threads); a publish re-reads only the
plan file (:func:`check_claim`), never the listing.
"""
from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Sequence

from .. import storage
from .plan import GenerationPlan
from .shards import (LEGACY_MANIFEST_FILE, LEGACY_PLAN_FILE, MANIFEST_FILE, PLAN_FILE, ShardStats, read_stats,
                     read_stats_from)

MAX_PLAN_BYTES = 64 << 20   # a plan is small; anything bigger is not ours
SHARD_RE = re.compile(r"gen-([0-9a-f]{8})-(\d{6})\.tar$")
MAX_PROBLEMS = 50
IO_WORKERS = 32             # concurrent stats reads / shard checks on resume (S3 latency-bound)
ROUNDS_DIR = ".ltaug/rounds"


class PlanConflictError(ValueError):
    """The output directory holds another plan's shards; nothing is overwritten."""


def plan_uri(output_uri: str) -> str:
    return storage.join(output_uri, PLAN_FILE)


def existing_plan_uri(output_uri: str) -> str | None:
    """The plan file of ``output_uri`` (``.ltaug/plan.json``, else an earlier version's ``_plan.json``)."""
    for uri in (plan_uri(output_uri), storage.join(output_uri, LEGACY_PLAN_FILE)):
        if storage.exists(uri):
            return uri
    return None


def manifest_uri(output_uri: str) -> str:
    return storage.join(output_uri, MANIFEST_FILE)


def existing_manifest_uri(output_uri: str) -> str | None:
    """The manifest of ``output_uri`` (``.ltaug/manifest.json``, else an earlier version's ``manifest.json``
    when that output has the earlier plan file too)."""
    if storage.exists(manifest_uri(output_uri)):
        return manifest_uri(output_uri)
    legacy = storage.join(output_uri, LEGACY_MANIFEST_FILE)
    return legacy if storage.exists(legacy) else None


def read_plan(output_uri: str) -> GenerationPlan | None:
    uri = existing_plan_uri(output_uri)
    if uri is None:
        return None
    try:
        return GenerationPlan.from_dict(storage.load_json(storage.read_bytes(uri, max_bytes=MAX_PLAN_BYTES), uri))
    except (ValueError, KeyError, TypeError) as e:
        raise PlanConflictError(f"{uri}: unreadable generation plan ({type(e).__name__}: {e}); this output is "
                                f"damaged or not ltaug's: use another generate.output_uri or delete it") from None


def list_tars(output_uri: str) -> list[str]:
    return [u for u in storage.listdir(output_uri, ".tar")]


def list_shards(output_uri: str) -> dict[str, tuple[str, int]]:
    """``{name: (uri, bytes)}`` of the ``*.tar`` directly under ``output_uri``: one listing call."""
    fs, path = storage.get_fs(output_uri)
    try:
        entries = storage.with_retry(lambda: fs.ls(path, detail=True), f"list {output_uri}")
    except FileNotFoundError:
        return {}
    out = {}
    for e in entries:
        name = e["name"].rstrip("/")
        if e.get("type") != "directory" and name.endswith(".tar"):
            out[name.rsplit("/", 1)[-1]] = (storage._restore_scheme(output_uri, name), int(e.get("size") or 0))
    return out


def pmap(fn: Callable[[Any], Any], items: Sequence[Any], workers: int = IO_WORKERS) -> list[Any]:
    """``[fn(x) for x in items]`` on a thread pool (storage reads are latency-bound), in order."""
    if len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as ex:
        return list(ex.map(fn, items))


# ------------------------------------------------------------------------------------------ refill rounds


def round_uri(output_uri: str, r: int) -> str:
    return storage.join(output_uri, ROUNDS_DIR, f"round-{r:04d}.json")


def read_rounds(output_uri: str, root: GenerationPlan) -> list[GenerationPlan]:
    """The plans of every round claimed in ``output_uri``: ``[root, round 1, round 2, ...]``."""
    plans = [root]
    while True:
        uri = round_uri(output_uri, len(plans))
        try:
            d = storage.load_json(storage.read_bytes(uri, max_bytes=MAX_PLAN_BYTES), uri)
        except FileNotFoundError:
            return plans
        try:
            p = GenerationPlan.from_dict(d)
        except (ValueError, KeyError, TypeError) as e:
            raise PlanConflictError(f"{uri}: unreadable refill plan ({type(e).__name__}: {e}); the output is "
                                    f"damaged: delete {output_uri} or use another generate.output_uri") from None
        if p.parent != root.digest or p.round != len(plans):
            raise PlanConflictError(f"{uri}: refill round {p.round} of plan {p.parent}, not round {len(plans)} of "
                                    f"{root.digest}; the output is damaged or mixed")
        plans.append(p)


def claim_round(output_uri: str, plan: GenerationPlan) -> GenerationPlan:
    """Claim refill round ``plan.round`` exclusively; returns the round plan the output holds (this one, or
    the one an earlier run of the same job claimed - it was derived from the same published stats)."""
    uri = round_uri(output_uri, plan.round)
    storage.create_exclusive(uri, json.dumps(plan.to_dict(), sort_keys=True, indent=1).encode())
    d = storage.load_json(storage.read_bytes(uri, max_bytes=MAX_PLAN_BYTES), uri)
    return GenerationPlan.from_dict(d)


def _conflict(output_uri: str, existing: GenerationPlan, plan: GenerationPlan) -> PlanConflictError:
    changed = sorted(k for k in set(existing.to_dict()) | set(plan.to_dict())
                     if existing.to_dict().get(k) != plan.to_dict().get(k))
    sett = existing.settings, plan.settings
    changed_settings = sorted(k for k in set(sett[0]) | set(sett[1]) if sett[0].get(k) != sett[1].get(k))
    return PlanConflictError(
        f"{output_uri} already holds generation plan {existing.digest} and this config gives plan "
        f"{plan.digest} (differs in: {', '.join(changed + changed_settings) or 'settings'}); refusing to "
        f"overwrite or mix them (another generate job may be writing there now). Use another "
        f"generate.output_uri, or delete {output_uri} to replace it.")


def _foreign(output_uri: str, plan: GenerationPlan, tars: Iterable[str],
             rounds: Sequence[GenerationPlan] = ()) -> None:
    ours = {p.shard_name(s) for p in (plan, *rounds) for s in range(p.num_shards)}
    foreign = [t for t in tars if t.rsplit("/", 1)[-1] not in ours]
    if foreign:
        raise PlanConflictError(f"{output_uri} holds {len(foreign)} shard(s) that are not part of plan {plan.digest} "
                                f"(e.g. {foreign[0]}); refusing to mix outputs. Use another generate.output_uri.")


def claim_output(output_uri: str, plan: GenerationPlan) -> bool:
    """Make ``output_uri`` belong to ``plan``, atomically; True when this call created the claim.

    The claim is ``_plan.json``, created exclusively (a hard link locally, a conditional PUT with
    ``If-None-Match: *`` on S3): of two jobs claiming one output at once, exactly one wins and the other
    sees the winner's plan. The plan is read back afterwards, so a backend that lost the race without
    saying so is caught too. Raises :class:`PlanConflictError` when the output belongs to another plan.
    """
    uri = plan_uri(output_uri)
    body = json.dumps(plan.to_dict(), sort_keys=True, indent=1).encode()
    existing = read_plan(output_uri)
    created = False
    if existing is None:
        _foreign(output_uri, plan, list_tars(output_uri))
        created = storage.create_exclusive(uri, body)
        existing = read_plan(output_uri)
        if existing is None:
            raise PlanConflictError(f"{uri}: claimed but not readable back; is another job deleting {output_uri}?")
    if existing.digest != plan.digest:
        raise _conflict(output_uri, existing, plan)
    return created


def check_claim(output_uri: str, plan: GenerationPlan, *, listing: bool = False) -> None:
    """Re-check, before committing (a shard, the manifest), that ``output_uri`` still belongs to ``plan``: one
    read of the plan file (another ltaug job cannot take a claimed output); with ``listing`` also that no
    foreign shards appeared (one listing: done once per run, not per shard)."""
    existing = read_plan(output_uri)
    if existing is None:            # removed meanwhile (a released claim): take it again, exclusively
        claim_output(output_uri, plan)
    elif existing.digest != plan.digest:
        raise _conflict(output_uri, existing, plan)
    if listing:
        _foreign(output_uri, plan, list_tars(output_uri), read_rounds(output_uri, plan)[1:])


def release_claim(output_uri: str, plan: GenerationPlan) -> bool:
    """Withdraw this plan's claim when nothing of it was published (a run that failed before its first shard),
    so a corrected re-run with another plan can use the output. True when the claim was removed."""
    try:
        existing = read_plan(output_uri)
        if existing is None or existing.digest != plan.digest or list_tars(output_uri):
            return False
        storage.remove(existing_plan_uri(output_uri) or plan_uri(output_uri))
        return True
    except (OSError, PlanConflictError):
        return False


def shard_intact(output_uri: str, plan: GenerationPlan, shard: int) -> str:
    """Cheap check of a published shard before a re-run skips it; "" when intact, else why not."""
    return check_published(output_uri, plan, shard)[0]


def check_published(output_uri: str, plan: GenerationPlan, shard: int,
                    size: int | None = None) -> tuple[str, ShardStats | None]:
    """``(why, stats)``: the shard's stats load (its first member, or an earlier layout's stats file), its size
    (``size`` from the listing, else a stat) equals the size its stats record, it starts with a valid tar
    header and ends with the end-of-archive marker.
    ``why`` is "" when intact; the stats are returned so a resume reads them once."""
    import tarfile

    name = plan.shard_name(shard)
    uri = storage.join(output_uri, name)
    try:
        st, in_tar = read_stats_from(output_uri, name)   # in_tar: its first header was read and parsed already
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"stats missing or unreadable ({type(e).__name__}: {e})", None
    fs, path = storage.get_fs(uri)
    try:
        if size is None:
            size = int(storage.with_retry(lambda: fs.size(path), f"stat {uri}"))
        if size != st.bytes:
            return f"{size} bytes but its stats say {st.bytes}", st
        if size < 3 * tarfile.BLOCKSIZE:
            return "too short for a tar", st
        if not in_tar:      # stats from an earlier layout's file: the tar's first header is still unchecked
            head = storage.read_range(uri, 0, tarfile.BLOCKSIZE)
            tarfile.TarInfo.frombuf(head, tarfile.ENCODING, "surrogateescape")
        tail = storage.read_range(uri, size - 2 * tarfile.BLOCKSIZE, size)
    except (OSError, tarfile.TarError) as e:
        return f"unreadable ({type(e).__name__}: {e})", st
    if tail.strip(b"\0"):
        return "no end-of-archive marker (truncated or overwritten)", st
    return "", st


def scan_output(output_uri: str, plans: Sequence[GenerationPlan], *, check: bool = True,
                on_damaged=None) -> dict[str, dict[int, ShardStats]]:
    """One listing of ``output_uri``; refuses foreign shards; checks every published shard of ``plans``
    concurrently (:func:`check_published`). Returns ``{plan digest: {shard: stats}}`` of the intact ones; a
    damaged one is left out (so it is generated again) and reported through ``on_damaged(name, why)``."""
    listing = list_shards(output_uri)
    _foreign(output_uri, plans[0], listing, plans[1:])
    todo = [(p, s) for p in plans for s in range(p.num_shards) if p.shard_name(s) in listing]
    out: dict[str, dict[int, ShardStats]] = {p.digest: {} for p in plans}

    def one(item):
        p, s = item
        if not check:
            return read_stats(output_uri, p.shard_name(s)), ""
        why, st = check_published(output_uri, p, s, listing[p.shard_name(s)][1])
        return st, why

    for (p, s), (st, why) in zip(todo, pmap(one, todo)):
        if why:
            if on_damaged is not None:
                on_damaged(p.shard_name(s), why)
            continue
        out[p.digest][s] = st
    return out


def prepare_output(output_uri: str, plan: GenerationPlan, *, check: bool = True,
                   on_damaged=None) -> list[int]:
    """Claim ``output_uri`` for ``plan`` (or check it already belongs to it); return the intact published shards.

    Raises :class:`PlanConflictError` when the directory belongs to another plan (a different budget, seed,
    checkpoint, sampler, guidance or filter): re-using it would mix two generations silently. With
    ``check``, every published shard is checked cheaply (:func:`check_published`, concurrently); a damaged
    one is left out of the result (so it is generated again) and reported through ``on_damaged(name, why)``.
    """
    claim_output(output_uri, plan)
    if not check:
        listing = list_shards(output_uri)
        plans = read_rounds(output_uri, plan)
        _foreign(output_uri, plan, listing, plans[1:])
        return sorted(s for s in range(plan.num_shards) if plan.shard_name(s) in listing)
    return sorted(scan_output(output_uri, read_rounds(output_uri, plan), on_damaged=on_damaged)[plan.digest])


def build_manifest(plan: GenerationPlan, stats: Iterable[ShardStats], class_names: Iterable[str] = (),
                   rounds: Sequence[GenerationPlan] = (), max_rounds: int = 1) -> dict[str, Any]:
    """Per-class counts summed over the shard stats of ``plan`` and its refill ``rounds``, plus the plan
    identity, the class names, the settings every sample shares, the shard list, the rounds and each
    class's shortfall (its target, ``plan.budget``, minus what was kept)."""
    C = plan.num_classes
    names = [str(n) for n in class_names] or [str(c) for c in range(C)]
    if len(names) != C:
        raise ValueError(f"build_manifest: {len(names)} class names for {C} classes")
    tot = {k: [0] * C for k in ("requested", "generated", "kept", "dropped")}
    by_plan = {p.digest: {"round": p.round, "plan": p.digest, "seed": p.seed, "budget": list(p.budget),
                          "num_shards": p.num_shards, "published": 0, "kept": [0] * C} for p in (plan, *rounds)}
    cats: dict[str, int] = {}
    shards = []
    for st in sorted(stats, key=lambda s: (by_plan.get(s.plan, {}).get("round", 0), s.shard)):
        for k in tot:
            for c, n in getattr(st, k).items():
                tot[k][c] += n
        if st.plan in by_plan:
            by_plan[st.plan]["published"] += 1
            for c, n in st.kept.items():
                by_plan[st.plan]["kept"][c] += n
        for cat, n in st.categories.items():
            cats[cat] = cats.get(cat, 0) + n
        shards.append({"name": st.name, "shard": st.shard, "kept": sum(st.kept.values()), "bytes": st.bytes})
    total_bytes = sum(s["bytes"] for s in shards)
    shortfall = [max(0, int(b) - k) for b, k in zip(plan.budget, tot["kept"])]
    return {"format": "ltaug-manifest-v1", "plan": plan.digest, "seed": plan.seed, "shard_size": plan.shard_size,
            "order": plan.order, "num_classes": C, "class_names": names, "budget": list(plan.budget), "per_class": tot,
            "categories": cats, "requested": sum(tot["requested"]), "generated": sum(tot["generated"]),
            "written": sum(tot["kept"]), "dropped": sum(tot["dropped"]), "num_shards": len(shards),
            "complete": all(r["published"] == r["num_shards"] for r in by_plan.values()), "shards": shards,
            "settings": plan.settings, "rounds": list(by_plan.values()), "max_rounds": int(max_rounds),
            "target_per_class": list(plan.budget), "shortfall_per_class": shortfall, "shortfall": sum(shortfall),
            "bytes_per_sample": round(total_bytes / max(1, sum(tot["kept"])), 1),
            "mean_shard_mb": round(total_bytes / max(1, len(shards)) / 2**20, 3)}


def collect_stats(output_uri: str, plan: GenerationPlan, shards: Iterable[int]) -> list[ShardStats]:
    """The stats of published shards of ``plan``, read concurrently."""
    return pmap(lambda s: read_stats(output_uri, plan.shard_name(s)), list(shards))


def write_manifest(output_uri: str, manifest: dict[str, Any]) -> str:
    uri = manifest_uri(output_uri)
    storage.write_bytes(uri, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return uri


from .verify import VerifyReport, verify  # noqa: E402  (kept importable from here)

__all__ = ["PlanConflictError", "prepare_output", "scan_output", "claim_output", "check_claim", "release_claim",
           "shard_intact", "check_published", "build_manifest", "collect_stats", "write_manifest", "read_plan",
           "read_rounds", "claim_round", "round_uri", "list_shards", "pmap", "verify", "VerifyReport", "list_tars",
           "plan_uri", "manifest_uri", "existing_plan_uri", "existing_manifest_uri"]
