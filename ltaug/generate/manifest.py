"""Output bookkeeping of generation: the plan file, the manifest, resume and ``verify``.

An output directory (local or s3://) holds the ``gen-<digest8>-<shard>.tar`` shards and nothing else a
reader would open; the bookkeeping is in the hidden ``.ltaug/`` folder: ``plan.json`` (the plan and its
digest), ``stats/<shard>.json`` per published shard and, once every shard is published, ``manifest.json``
(per-class requested / generated / kept / dropped, class names, the shared settings). Outputs of earlier
versions (``_plan.json``, ``_stats/``, ``manifest.json`` beside the tars) are read, resumed and verified. A directory belongs to one plan:
resuming the same plan skips published shards; a different plan is refused with an error naming the
existing digest. :func:`verify` checks an output against its plan: every planned id present exactly once
(kept in a shard, or dropped with a reason), no duplicates, no foreign keys, every shard a valid tar
whose members decode.
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from .. import storage
from .plan import GenerationPlan, parse_key
from .shards import LEGACY_MANIFEST_FILE, LEGACY_PLAN_FILE, MANIFEST_FILE, PLAN_FILE, ShardStats, read_stats

MAX_PLAN_BYTES = 64 << 20   # a plan is small; anything bigger is not ours
SHARD_RE = re.compile(r"gen-([0-9a-f]{8})-(\d{6})\.tar$")
MAX_PROBLEMS = 50


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


def _foreign(output_uri: str, plan: GenerationPlan, tars: list[str]) -> None:
    ours = {plan.shard_name(s) for s in range(plan.num_shards)}
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


def check_claim(output_uri: str, plan: GenerationPlan) -> None:
    """Re-check, before committing (a shard, the manifest), that ``output_uri`` still belongs to ``plan``."""
    existing = read_plan(output_uri)
    if existing is None:            # removed meanwhile (a released claim): take it again, exclusively
        claim_output(output_uri, plan)
    elif existing.digest != plan.digest:
        raise _conflict(output_uri, existing, plan)
    _foreign(output_uri, plan, list_tars(output_uri))


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
    """Cheap check of a published shard before a re-run skips it: its stats load, its size equals the size
    recorded in the stats, it starts with a valid tar header and ends with the end-of-archive marker.
    Returns "" when intact, else why not."""
    import tarfile

    name = plan.shard_name(shard)
    uri = storage.join(output_uri, name)
    try:
        st = read_stats(output_uri, name)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"stats missing or unreadable ({type(e).__name__})"
    fs, path = storage.get_fs(uri)
    try:
        size = int(storage.with_retry(lambda: fs.size(path), f"stat {uri}"))
        if size != st.bytes:
            return f"{size} bytes but its stats say {st.bytes}"
        if size < 3 * tarfile.BLOCKSIZE:
            return "too short for a tar"
        head = storage.with_retry(lambda: fs.cat_file(path, start=0, end=tarfile.BLOCKSIZE), f"read {uri}")
        tail = storage.with_retry(lambda: fs.cat_file(path, start=size - 2 * tarfile.BLOCKSIZE, end=size),
                                  f"read {uri}")
        tarfile.TarInfo.frombuf(head, tarfile.ENCODING, "surrogateescape")
    except (OSError, tarfile.TarError) as e:
        return f"unreadable ({type(e).__name__}: {e})"
    if tail.strip(b"\0"):
        return "no end-of-archive marker (truncated or overwritten)"
    return ""


def prepare_output(output_uri: str, plan: GenerationPlan, *, check: bool = True,
                   on_damaged=None) -> list[int]:
    """Claim ``output_uri`` for ``plan`` (or check it already belongs to it); return the intact published shards.

    Raises :class:`PlanConflictError` when the directory belongs to another plan (a different budget, seed,
    checkpoint, sampler, guidance or filter): re-using it would mix two generations silently. With
    ``check``, every published shard is checked cheaply (:func:`shard_intact`); a damaged one is left out
    of the result (so it is generated again) and reported through ``on_damaged(name, why)``.
    """
    claim_output(output_uri, plan)
    tars = list_tars(output_uri)
    _foreign(output_uri, plan, tars)
    ours = {plan.shard_name(s): s for s in range(plan.num_shards)}
    done = sorted(ours[t.rsplit("/", 1)[-1]] for t in tars)
    if not check:
        return done
    intact = []
    for s in done:
        why = shard_intact(output_uri, plan, s)
        if why:
            if on_damaged is not None:
                on_damaged(plan.shard_name(s), why)
            continue
        intact.append(s)
    return intact


def build_manifest(plan: GenerationPlan, stats: Iterable[ShardStats],
                   class_names: Iterable[str] = ()) -> dict[str, Any]:
    """Per-class counts summed over shard stats, plus the plan identity, the class names, the settings every
    sample shares and the shard list."""
    C = plan.num_classes
    names = [str(n) for n in class_names] or [str(c) for c in range(C)]
    if len(names) != C:
        raise ValueError(f"build_manifest: {len(names)} class names for {C} classes")
    tot = {k: [0] * C for k in ("requested", "generated", "kept", "dropped")}
    cats: dict[str, int] = {}
    shards = []
    for st in sorted(stats, key=lambda s: s.shard):
        for k in tot:
            for c, n in getattr(st, k).items():
                tot[k][c] += n
        for cat, n in st.categories.items():
            cats[cat] = cats.get(cat, 0) + n
        shards.append({"name": st.name, "shard": st.shard, "kept": sum(st.kept.values()), "bytes": st.bytes})
    return {"format": "ltaug-manifest-v1", "plan": plan.digest, "seed": plan.seed, "shard_size": plan.shard_size,
            "order": plan.order, "num_classes": C, "class_names": names, "budget": list(plan.budget), "per_class": tot, "categories": cats,
            "requested": sum(tot["requested"]), "generated": sum(tot["generated"]),
            "written": sum(tot["kept"]), "dropped": sum(tot["dropped"]), "num_shards": len(shards),
            "complete": len(shards) == plan.num_shards, "shards": shards, "settings": plan.settings}


def collect_stats(output_uri: str, plan: GenerationPlan, shards: Iterable[int]) -> list[ShardStats]:
    return [read_stats(output_uri, plan.shard_name(s)) for s in shards]


def write_manifest(output_uri: str, manifest: dict[str, Any]) -> str:
    uri = manifest_uri(output_uri)
    storage.write_bytes(uri, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return uri


# ------------------------------------------------------------------------------------------ verify


@dataclass
class VerifyReport:
    output_uri: str
    plan: str = ""
    shards_expected: int = 0
    shards_found: int = 0
    samples: int = 0
    dropped: int = 0
    missing: int = 0
    duplicates: int = 0
    bad: int = 0
    per_class_kept: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, msg: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(msg)
        elif len(self.problems) == MAX_PROBLEMS:
            self.problems.append("... (more problems not listed)")

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


def _check_png(data: bytes) -> None:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()


def verify(output_uri: str, decode: bool = True, require_complete: bool = True) -> VerifyReport:
    """Check an output directory against its own plan file (see the module docstring)."""
    from ..data.shards import iter_samples
    from ..data.sources.common import DataError

    rep = VerifyReport(output_uri)
    plan = read_plan(output_uri)
    if plan is None:
        rep.problem(f"{output_uri}: no {PLAN_FILE}; not a generation output (or nothing was written yet)")
        return rep
    rep.plan, rep.shards_expected = plan.digest, plan.num_shards
    seen = np.zeros(plan.total, dtype=np.uint8)       # 1 kept, 2 dropped; > the value -> counted twice
    kept = np.zeros(plan.num_classes, dtype=np.int64)
    names = {plan.shard_name(s): s for s in range(plan.num_shards)}
    found: list[int] = []
    for uri in list_tars(output_uri):
        base = uri.rsplit("/", 1)[-1]
        if base not in names:
            rep.problem(f"{uri}: not a shard of plan {plan.digest}")
            continue
        s = names[base]
        found.append(s)
        try:
            stats = read_stats(output_uri, base)
        except (FileNotFoundError, ValueError, KeyError) as e:
            rep.problem(f"{uri}: stats missing or unreadable ({type(e).__name__}: {e})")
            stats = None
        try:
            for smp in iter_samples(uri):
                key = smp["__key__"]
                try:
                    i = plan.id_of_key(key)
                except (ValueError, KeyError) as e:
                    rep.problem(f"{uri}: key {key!r} is not in the plan ({e})")
                    rep.bad += 1
                    continue
                if int(plan.shard_of([i])[0]) != s:
                    rep.problem(f"{uri}: key {key!r} (id {i}) belongs to another shard")
                if seen[i]:
                    rep.duplicates += 1
                    rep.problem(f"{uri}: key {key!r} appears more than once")
                    continue
                seen[i] = 1
                label = parse_key(key)[0]
                missing = [e for e in ("png", "cls", "json") if e not in smp]
                if missing:
                    rep.bad += 1
                    rep.problem(f"{uri}: key {key!r} lacks {missing}")
                    continue
                try:
                    if int(smp["cls"].decode().strip()) != label:
                        raise ValueError(f".cls {smp['cls']!r} != class {label}")
                    meta = storage.load_json(smp["json"], f"{uri} key {key}.json")
                    if int(meta["class"]) != label or int(meta["id"]) != i:
                        raise ValueError(f".json class/id {meta.get('class')}/{meta.get('id')} != {label}/{i}")
                    if decode:
                        _check_png(smp["png"])
                except Exception as e:  # noqa: BLE001 - any decode failure is a bad sample
                    rep.bad += 1
                    rep.problem(f"{uri}: key {key!r} does not decode ({type(e).__name__}: {e})")
                    continue
                kept[label] += 1
                rep.samples += 1
        except DataError as e:
            rep.bad += 1
            rep.problem(f"{uri}: {e}")
            continue
        for key, reason in (stats.dropped_keys.items() if stats else ()):
            try:
                i = plan.id_of_key(key)
            except (ValueError, KeyError):
                rep.problem(f"{uri}: stats list dropped key {key!r} outside the plan")
                continue
            if seen[i]:
                rep.duplicates += 1
                rep.problem(f"{uri}: key {key!r} is both written and recorded as dropped ({reason})")
                continue
            seen[i] = 2
            rep.dropped += 1
    rep.shards_found = len(found)
    rep.per_class_kept = kept.tolist()
    absent_shards = sorted(set(range(plan.num_shards)) - set(found))
    if absent_shards and require_complete:
        rep.problem(f"{len(absent_shards)} of {plan.num_shards} shards not published yet "
                    f"(first: {plan.shard_name(absent_shards[0])}); re-run the job to resume")
    present = np.zeros(plan.total, bool)
    for s in found:
        present[plan.shard_ids(s)] = True
    gaps = np.flatnonzero(present & (seen == 0))
    rep.missing = int(len(gaps)) + (sum(plan.shard_range(s)[1] - plan.shard_range(s)[0] for s in absent_shards)
                                    if require_complete else 0)
    for i in gaps[:5]:
        r = plan.rows([i])
        rep.problem(f"planned id {int(i)} (key {r['key'][0]}) is neither in a shard nor recorded as dropped")
    man_uri = existing_manifest_uri(output_uri) or manifest_uri(output_uri)
    if storage.exists(man_uri):
        man = storage.load_json(storage.read_bytes(man_uri, max_bytes=MAX_PLAN_BYTES), man_uri)
        if man.get("plan") != plan.digest:
            rep.problem(f"{man_uri}: manifest of plan {man.get('plan')} but the plan file says {plan.digest}")
        elif man.get("per_class", {}).get("kept") != rep.per_class_kept:
            rep.problem(f"{man_uri}: per-class kept {man.get('per_class', {}).get('kept')} but the shards hold "
                        f"{rep.per_class_kept}")
    elif require_complete and not absent_shards:
        rep.problem(f"{man_uri}: missing (the job did not finish); re-run the job to write it")
    return rep


__all__ = ["PlanConflictError", "prepare_output", "claim_output", "check_claim", "release_claim", "shard_intact", "build_manifest", "collect_stats", "write_manifest", "read_plan",
           "verify", "VerifyReport", "list_tars", "plan_uri", "manifest_uri", "existing_plan_uri", "existing_manifest_uri"]
