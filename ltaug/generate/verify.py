"""``verify``: check a generation output against its own plan (and refill rounds), one task per shard.

Every planned id present exactly once (kept in a shard, or dropped with a reason in the shard's stats), no
duplicates, no foreign keys, every shard a valid tar whose members decode, the manifest agreeing with the
shards. The work splits into :class:`ShardCheck` (one shard: read, decode, compare with the plan; returns a
small JSON-able dict) and a reduce on the driver (one ``uint8`` per planned row: seen kept / dropped), so
a launcher can run the shard checks anywhere: in this process one after another (``LocalLauncher``), or as
Ray Data tasks over the cluster (``RayLauncher.map_verify``).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .. import storage
from .manifest import (MAX_PLAN_BYTES, MAX_PROBLEMS, PLAN_FILE, existing_manifest_uri, list_shards, manifest_uri,
                       read_plan, read_rounds)
from .plan import GenerationPlan, parse_key
from .shards import read_stats

MapFn = Callable[[Callable[[Any], dict], Sequence[Any]], Iterable[dict]]


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
    rounds: int = 1

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


_PLANS: dict[str, GenerationPlan] = {}      # per process: a plan's permutation is computed once per worker


class ShardCheck:
    """``check((round, shard)) -> dict``: one published shard against its round's plan (picklable, small)."""

    def __init__(self, output_uri: str, plans: Sequence[dict], decode: bool = True) -> None:
        self.output_uri, self.plans, self.decode = output_uri, list(plans), decode

    def plan(self, r: int) -> GenerationPlan:
        p = GenerationPlan.from_dict(self.plans[r])
        return _PLANS.setdefault(p.digest, p)

    def __call__(self, item: Sequence[int]) -> dict:
        from ..data.shards import iter_samples
        from ..data.sources.common import DataError

        r, s = int(item[0]), int(item[1])
        plan = self.plan(r)
        base = plan.shard_name(s)
        uri = storage.join(self.output_uri, base)
        res: dict[str, Any] = {"round": r, "shard": s, "kept": [], "labels": [], "dropped": [], "dropped_why": [],
                               "bad": 0, "duplicates": 0, "problems": []}
        problem = lambda m: res["problems"].append(m) if len(res["problems"]) < MAX_PROBLEMS else None  # noqa: E731
        mine = set(plan.shard_ids(s).tolist())
        seen: set[int] = set()
        try:
            stats = read_stats(self.output_uri, base)
        except (FileNotFoundError, ValueError, KeyError) as e:
            problem(f"{uri}: stats missing or unreadable ({type(e).__name__}: {e})")
            stats = None
        try:
            for smp in iter_samples(uri):
                key = smp["__key__"]
                try:
                    i = plan.id_of_key(key)
                except (ValueError, KeyError) as e:
                    problem(f"{uri}: key {key!r} is not in the plan ({e})")
                    res["bad"] += 1
                    continue
                if i not in mine:
                    problem(f"{uri}: key {key!r} (id {i}) belongs to another shard")
                if i in seen:
                    res["duplicates"] += 1
                    problem(f"{uri}: key {key!r} appears more than once")
                    continue
                seen.add(i)
                label = parse_key(key)[0]
                missing = [e for e in ("png", "cls", "json") if e not in smp]
                if missing:
                    res["bad"] += 1
                    problem(f"{uri}: key {key!r} lacks {missing}")
                    continue
                try:
                    if int(smp["cls"].decode().strip()) != label:
                        raise ValueError(f".cls {smp['cls']!r} != class {label}")
                    meta = storage.load_json(smp["json"], f"{uri} key {key}.json")
                    if int(meta["class"]) != label or int(meta["id"]) != i:
                        raise ValueError(f".json class/id {meta.get('class')}/{meta.get('id')} != {label}/{i}")
                    if self.decode:
                        _check_png(smp["png"])
                except Exception as e:  # noqa: BLE001 - any decode failure is a bad sample
                    res["bad"] += 1
                    problem(f"{uri}: key {key!r} does not decode ({type(e).__name__}: {e})")
                    continue
                res["kept"].append(i)
                res["labels"].append(label)
        except DataError as e:
            res["bad"] += 1
            problem(f"{uri}: {e}")
            res["kept"], res["labels"], res["unreadable"] = [], [], True
            return res
        for key, reason in (stats.dropped_keys.items() if stats else ()):
            try:
                i = plan.id_of_key(key)
            except (ValueError, KeyError):
                problem(f"{uri}: stats list dropped key {key!r} outside the plan")
                continue
            res["dropped"].append(i)
            res["dropped_why"].append(f"{key!r} ({reason})")
        return res


def serial_map(fn: Callable[[Any], dict], items: Sequence[Any]) -> Iterable[dict]:
    for it in items:
        yield fn(it)


def verify(output_uri: str, decode: bool = True, require_complete: bool = True,
           map_fn: MapFn | None = None) -> VerifyReport:
    """Check an output directory against its own plan file and refill rounds (see the module docstring);
    ``map_fn(check, items)`` runs the per-shard checks (default: here, one after another)."""
    rep = VerifyReport(output_uri)
    root = read_plan(output_uri)
    if root is None:
        rep.problem(f"{output_uri}: no {PLAN_FILE}; not a generation output (or nothing was written yet)")
        return rep
    plans = read_rounds(output_uri, root)
    rep.plan, rep.rounds = root.digest, len(plans)
    rep.shards_expected = sum(p.num_shards for p in plans)
    names = {p.shard_name(s): (r, s) for r, p in enumerate(plans) for s in range(p.num_shards)}
    listing = list_shards(output_uri)
    items = []
    for base, (uri, _size) in sorted(listing.items()):
        if base not in names:
            rep.problem(f"{uri}: not a shard of plan {root.digest}")
            continue
        items.append(names[base])
    check = ShardCheck(output_uri, [p.to_dict() for p in plans], decode)
    seen = [np.zeros(p.total, dtype=np.uint8) for p in plans]   # 1 kept, 2 dropped
    kept = np.zeros(root.num_classes, dtype=np.int64)
    found: set[tuple[int, int]] = set()
    for res in (map_fn or serial_map)(check, items):
        r = int(res["round"])
        found.add((r, int(res["shard"])))
        rep.bad += res["bad"]
        rep.duplicates += res["duplicates"]
        for p in res["problems"]:
            rep.problem(p)
        if res.get("unreadable"):
            continue
        uri = listing[plans[r].shard_name(int(res["shard"]))][0]
        for i, label in zip(res["kept"], res["labels"]):
            if seen[r][i]:
                rep.duplicates += 1
                rep.problem(f"{uri}: key {plans[r].rows([i])['key'][0]!r} appears more than once")
                continue
            seen[r][i] = 1
            kept[label] += 1
            rep.samples += 1
        for i, why in zip(res["dropped"], res["dropped_why"]):
            if seen[r][i]:
                rep.duplicates += 1
                rep.problem(f"{uri}: key {why.split(' (')[0]} is both written and recorded as dropped "
                            f"({why.split(' (', 1)[-1].rstrip(')')})")
                continue
            seen[r][i] = 2
            rep.dropped += 1
    rep.shards_found = len(found)
    rep.per_class_kept = kept.tolist()
    absent = [(r, s) for r, p in enumerate(plans) for s in range(p.num_shards) if (r, s) not in found]
    if absent and require_complete:
        r0, s0 = absent[0]
        rep.problem(f"{len(absent)} of {rep.shards_expected} shards not published yet "
                    f"(first: {plans[r0].shard_name(s0)}); re-run the job to resume")
    for r, p in enumerate(plans):
        present = np.zeros(p.total, bool)
        for (rr, s) in found:
            if rr == r:
                present[p.shard_ids(s)] = True
        gaps = np.flatnonzero(present & (seen[r] == 0))
        rep.missing += int(len(gaps))
        for i in gaps[:5]:
            rep.problem(f"planned id {int(i)} (key {p.rows([i])['key'][0]}) is neither in a shard nor recorded "
                        f"as dropped")
    if require_complete:
        rep.missing += sum(p.shard_range(s)[1] - p.shard_range(s)[0] for r, p in enumerate(plans)
                           for s in range(p.num_shards) if (r, s) in set(absent))
    man_uri = existing_manifest_uri(output_uri) or manifest_uri(output_uri)
    if storage.exists(man_uri):
        man = storage.load_json(storage.read_bytes(man_uri, max_bytes=MAX_PLAN_BYTES), man_uri)
        if man.get("plan") != root.digest:
            rep.problem(f"{man_uri}: manifest of plan {man.get('plan')} but the plan file says {root.digest}")
        elif man.get("per_class", {}).get("kept") != rep.per_class_kept:
            rep.problem(f"{man_uri}: per-class kept {man.get('per_class', {}).get('kept')} but the shards hold "
                        f"{rep.per_class_kept}")
    elif require_complete and not absent:
        rep.problem(f"{man_uri}: missing (the job did not finish); re-run the job to write it")
    return rep


__all__ = ["verify", "VerifyReport", "ShardCheck", "serial_map"]
