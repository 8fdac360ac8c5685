"""GenerationPlan: which synthetic images a generation job makes, as a pure function of row ids.

A plan is the per-class budget ``n_c`` (top every class up to a target, DiffuLT's balancing; or an
explicit budget) plus a seed. Row ids ``0 .. N-1`` are laid out class-major: row ``i`` is image
``j = i - offset[c]`` of class ``c``. Everything about a row - label, seed, key, shard - is computed
from its id (vectorised over arrays of ids), so no list of rows ever exists on the driver. A row's seed
depends only on ``(seed, c, j)``: raising one class's budget never changes another class's images.

Shards are fixed slices ``[s * shard_size, (s + 1) * shard_size)`` of the plan's *order*: with
``order="interleaved"`` (new plans) a seeded permutation of the row ids, so every shard mixes the
classes (a streaming reader without a shuffle buffer still sees every class); ``order="class"`` (plans
written before, read back unchanged) is the identity. The permutation sorts the ids by a SplitMix64 hash
of ``(seed, id)``: a pure function of the plan, identical on every machine and numpy version, so the same
plan gives the same shards byte for byte. A shard is the unit of work and of atomic publish. The plan digest names the output: a different plan (budget, seed, checkpoint,
sampler, guidance, filter) has a different digest and never overwrites an earlier output silently.

Refill rounds (``generate.max_rounds``): after filtering, a class below its target gets a further plan,
:meth:`GenerationPlan.refill`: round ``r`` tops up the shortfall with a seed derived from the root plan's
digest and ``r`` (:func:`refill_seed`), and its in-class indices continue after the earlier rounds'
(``index_base``), so every key of every round is unique and every row is a pure function of the round plan.
A round plan has its own digest and shard names; round 0 is the root plan, unchanged.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

PLAN_FORMAT = "ltaug-plan-v1"
ORDERS = ("interleaved", "class")              # shard order: seeded permutation of the ids, or class-major
ORDER_SALT = 0x5A4D_0F0E_5EED_0001             # separates the order hash from the row-seed hash
KEY_RE = re.compile(r"^c(\d{4,})_(\d{7,})$")   # <key> of a row: no dots (WebDataset splits at the first dot)
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (Steele et al. 2014), vectorised over uint64; wraps modulo 2**64."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def row_seeds(seed: int, labels: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Seed of image ``index`` of class ``label`` (int64 in ``[0, 2**63)``), a pure function of the three."""
    with np.errstate(over="ignore"):
        h = _splitmix64(np.full(np.shape(labels), np.uint64(seed & 0xFFFFFFFFFFFFFFFF)))
        h = _splitmix64(h ^ np.asarray(labels, dtype=np.uint64))
        h = _splitmix64(h ^ np.asarray(index, dtype=np.uint64))
    return (h >> np.uint64(1)).astype(np.int64)


def refill_seed(root_digest: str, round: int) -> int:
    """Seed of refill round ``round`` of the root plan ``root_digest``: sha256 of both, 63 bits."""
    return int(hashlib.sha256(f"{root_digest}:refill:{int(round)}".encode()).hexdigest()[:15], 16)


def make_key(label: int, index: int) -> str:
    return f"c{int(label):04d}_{int(index):07d}"


def parse_key(key: str) -> tuple[int, int]:
    """``(label, index)`` of a row key; ValueError for anything else."""
    m = KEY_RE.match(key.rsplit("/", 1)[-1])
    if not m:
        raise ValueError(f"{key!r} is not a generation key (c<class>_<index>)")
    return int(m.group(1)), int(m.group(2))


def budget_from_counts(counts: Sequence[int], target: int = 0, budget: Sequence[int] = ()) -> tuple[int, ...]:
    """Per-class number of images: ``budget`` when given, else ``max(0, target - n_c)`` (target 0 = head count)."""
    if budget:
        if len(budget) != len(counts) and counts:
            raise ValueError(f"generate.budget has {len(budget)} entries but there are {len(counts)} classes")
        if any(int(b) < 0 for b in budget):
            raise ValueError(f"generate.budget {list(budget)}: entries must be >= 0")
        return tuple(int(b) for b in budget)
    if not counts:
        raise ValueError("no class counts to plan from (set generate.counts or model.checkpoint)")
    t = int(target) if target else max(int(c) for c in counts)
    return tuple(max(0, t - int(c)) for c in counts)


@dataclass(frozen=True)
class GenerationPlan:
    """Per-class budget + seed + shard size; ``settings`` are the generation settings the digest covers."""

    budget: tuple[int, ...]
    seed: int = 0
    shard_size: int = 256
    settings: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    order: str = "class"       # "interleaved" for new plans (from_counts); "class" reads old plans unchanged
    round: int = 0             # refill round (0 = the root plan)
    index_base: tuple[int, ...] = ()   # per class: first in-class index of this round (after earlier rounds)
    parent: str = ""           # digest of the root plan (refill rounds only)

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"plan order {self.order!r}; choose one of {ORDERS}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if any(b < 0 for b in self.budget):
            raise ValueError(f"budget {list(self.budget)}: entries must be >= 0")
        if self.index_base and len(self.index_base) != len(self.budget):
            raise ValueError(f"index_base has {len(self.index_base)} entries for {len(self.budget)} classes")
        object.__setattr__(self, "_base", np.asarray(self.index_base or [0] * len(self.budget), dtype=np.int64))
        object.__setattr__(self, "_offsets", np.concatenate([[0], np.cumsum(self.budget, dtype=np.int64)]))
        object.__setattr__(self, "_perm", None)

    def __getstate__(self) -> dict[str, Any]:     # the permutation is recomputed where needed, not shipped
        return {k: v for k, v in self.__dict__.items() if k not in ("_perm", "_inverse")} | {"_perm": None}

    @staticmethod
    def from_counts(counts: Sequence[int], target: int = 0, budget: Sequence[int] = (), seed: int = 0,
                    shard_size: int = 256, settings: dict[str, Any] | None = None,
                    order: str = "interleaved") -> "GenerationPlan":
        return GenerationPlan(budget_from_counts(counts, target, budget), seed, shard_size, dict(settings or {}),
                              order)

    # ---------------------------------------------------------------- sizes
    @property
    def num_classes(self) -> int:
        return len(self.budget)

    @property
    def total(self) -> int:
        return int(self._offsets[-1])

    @property
    def offsets(self) -> np.ndarray:
        """``[C+1]``: rows of class c are ``offsets[c] .. offsets[c+1]-1``."""
        return self._offsets

    @property
    def num_shards(self) -> int:
        return -(-self.total // self.shard_size)

    def shard_range(self, s: int) -> tuple[int, int]:
        if not 0 <= s < self.num_shards:
            raise IndexError(f"shard {s} out of range 0..{self.num_shards - 1}")
        return s * self.shard_size, min((s + 1) * self.shard_size, self.total)

    def permutation(self) -> np.ndarray:
        """``[N]``: position p of the shard order holds row id ``permutation()[p]`` (computed once, cached)."""
        if self._perm is None:
            ids = np.arange(self.total, dtype=np.int64)
            if self.order == "interleaved":
                with np.errstate(over="ignore"):
                    h = _splitmix64(np.full(ids.shape, np.uint64((self.seed ^ ORDER_SALT) & 0xFFFFFFFFFFFFFFFF)))
                    h = _splitmix64(h ^ ids.astype(np.uint64))
                ids = np.argsort(h, kind="stable").astype(np.int64)
            object.__setattr__(self, "_perm", ids)
        return self._perm

    def shard_ids(self, s: int) -> np.ndarray:
        """Row ids of shard ``s``, in the order they are written."""
        lo, hi = self.shard_range(s)
        return self.permutation()[lo:hi]

    def shard_of(self, ids: np.ndarray) -> np.ndarray:
        """The shard that holds each row id."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.order == "class":
            return ids // self.shard_size
        inverse = self.__dict__.get("_inverse")
        if inverse is None:
            inverse = np.empty(self.total, dtype=np.int64)
            inverse[self.permutation()] = np.arange(self.total, dtype=np.int64)
            object.__setattr__(self, "_inverse", inverse)
        return inverse[ids] // self.shard_size

    # ---------------------------------------------------------------- rows
    def rows(self, ids: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """``{id, label, index, seed, key}`` for the given row ids (vectorised)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.total):
            raise IndexError(f"row ids must lie in 0..{self.total - 1}")
        label = np.searchsorted(self._offsets, ids, side="right") - 1
        index = ids - self._offsets[label] + self._base[label]
        seeds = row_seeds(self.seed, label, index)
        keys = np.array([make_key(c, j) for c, j in zip(label.tolist(), index.tolist())], dtype=object)
        return {"id": ids, "label": label.astype(np.int64), "index": index.astype(np.int64), "seed": seeds,
                "key": keys}

    def id_of(self, label: int, index: int) -> int:
        base = int(self._base[label]) if 0 <= label < self.num_classes else 0
        if not 0 <= label < self.num_classes or not 0 <= index - base < self.budget[label]:
            raise KeyError(f"class {label} image {index} is not in the plan (indices {base}.."
                           f"{base + (self.budget[label] if 0 <= label < self.num_classes else 0) - 1})")
        return int(self._offsets[label] + index - base)

    # ---------------------------------------------------------------- refill rounds
    def refill(self, round: int, shortfall: Sequence[int], index_base: Sequence[int]) -> "GenerationPlan":
        """Round ``round`` (>= 1) of this root plan: ``shortfall[c]`` more images of class ``c``, in-class indices
        from ``index_base[c]`` on, seed :func:`refill_seed`; same shard size, order and settings."""
        if self.round:
            raise ValueError("refill: call it on the root plan (round 0)")
        if round < 1 or len(shortfall) != self.num_classes or len(index_base) != self.num_classes:
            raise ValueError(f"refill round {round}: need round >= 1 and {self.num_classes} shortfall/base entries")
        return GenerationPlan(tuple(int(b) for b in shortfall), refill_seed(self.digest, round), self.shard_size,
                              dict(self.settings), self.order, int(round), tuple(int(b) for b in index_base),
                              self.digest)

    def id_of_key(self, key: str) -> int:
        return self.id_of(*parse_key(key))

    # ---------------------------------------------------------------- identity
    def to_dict(self) -> dict[str, Any]:
        d = {"format": PLAN_FORMAT, "budget": list(self.budget), "seed": self.seed,
             "shard_size": self.shard_size, "settings": self.settings}
        if self.order != "class":    # absent in plans written before interleaving: their digest is unchanged
            d["order"] = self.order
        if self.round:               # refill rounds only: a root plan's digest is unchanged
            d.update(round=self.round, index_base=list(self.index_base), parent=self.parent)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "GenerationPlan":
        if d.get("format") != PLAN_FORMAT:
            raise ValueError(f"not a generation plan (format {d.get('format')!r})")
        return GenerationPlan(tuple(int(b) for b in d["budget"]), int(d["seed"]), int(d["shard_size"]),
                              dict(d.get("settings") or {}), str(d.get("order", "class")), int(d.get("round", 0)),
                              tuple(int(b) for b in d.get("index_base", ())), str(d.get("parent", "")))

    @property
    def digest(self) -> str:
        """16 hex chars of sha256 over the canonical plan (budget, seed, shard size, settings)."""
        d = self.to_dict()
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def shard_name(self, s: int) -> str:
        """Plan-keyed shard file name: same plan and shard -> same name, on every run."""
        return f"gen-{self.digest[:8]}-{s:06d}.tar"


__all__ = ["GenerationPlan", "budget_from_counts", "row_seeds", "refill_seed", "make_key", "parse_key", "KEY_RE", "PLAN_FORMAT", "ORDERS"]
