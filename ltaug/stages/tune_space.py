"""``tune.space`` syntax: dotted config key -> a list or a distribution, checked before any work.

- a list ``[a, b, c]``: a categorical axis; a full grid axis when ``tune.search=grid``, else one random pick
  per trial;
- ``{choice: [a, b, c]}``: always one random pick per trial (also under ``tune.search=grid``);
- ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}`` (``0 < lo``): a float drawn per trial;
- ``{randint: [lo, hi]}``: an integer in ``[lo, hi]`` (both ends included) drawn per trial.

Every candidate (both ends of a range, each listed value) must pass ``with_values`` on the key, so a bad
key or value fails up front naming ``tune.space.<key>``. The sequential launcher samples with a seeded
``random.Random`` (:func:`sample`); the Ray launcher maps each :class:`Dist` to ``ray.tune.*``; the optional
Optuna searcher to ``optuna.distributions`` (:func:`optuna_distribution`).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..config import Config, ConfigError, with_values

KINDS = ("list", "choice", "uniform", "loguniform", "randint")
SEARCHERS = ("random", "optuna")


@dataclass(frozen=True)
class Dist:
    """One axis of the space. ``kind``: list | choice (``values``), uniform | loguniform | randint (``lo, hi``)."""

    kind: str
    values: tuple[Any, ...] = ()
    lo: float = 0.0
    hi: float = 0.0

    @property
    def categorical(self) -> bool:
        return self.kind in ("list", "choice")

    def candidates(self) -> tuple[Any, ...]:
        """Values checked up front: every categorical value, both ends (and the middle) of a range."""
        if self.categorical:
            return self.values
        if self.kind == "randint":
            return (int(self.lo), int(self.hi))
        mid = math.sqrt(self.lo * self.hi) if self.kind == "loguniform" else (self.lo + self.hi) / 2
        return (self.lo, mid, self.hi)


def as_dist(v: Any) -> Dist:
    """A :class:`Dist` as it is (the launchers' tests build spaces of plain tuples = lists)."""
    if isinstance(v, Dist):
        return v
    return Dist("list", tuple(_plain(x) for x in v))


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _number(key: str, kind: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{key}: {kind} bounds must be finite numbers, got {v!r}")
    return float(v)


def parse_dist(key: str, v: Any) -> Dist:
    """One ``tune.space`` entry (``key`` is ``tune.space.<dotted key>``, used in every message)."""
    if isinstance(v, (list, tuple)):
        if not v:
            raise ConfigError(f"{key}: an empty list has nothing to try; give candidate values, e.g. [0.5, 1.0]")
        return Dist("list", tuple(_plain(x) for x in v))
    if not isinstance(v, Mapping) or len(v) != 1:
        raise ConfigError(f"{key}: expected a list of values or one of {{choice: [...]}}, {{uniform: [lo, hi]}}, "
                          f"{{loguniform: [lo, hi]}}, {{randint: [lo, hi]}}; got {v!r}")
    (kind, args), = v.items()
    if kind not in KINDS[1:]:
        raise ConfigError(f"{key}: unknown distribution {kind!r}; choose from {list(KINDS[1:])} (or a plain list)")
    if not isinstance(args, (list, tuple)) or not args:
        raise ConfigError(f"{key}: {kind} takes a non-empty list, got {args!r}")
    if kind == "choice":
        return Dist("choice", tuple(_plain(x) for x in args))
    if len(args) != 2:
        raise ConfigError(f"{key}: {kind} takes [lo, hi], got {list(args)}")
    lo, hi = (_number(key, kind, _plain(x)) for x in args)
    if not lo < hi:
        raise ConfigError(f"{key}: {kind} needs lo < hi, got [{args[0]}, {args[1]}]")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{key}: loguniform needs 0 < lo, got {args[0]}")
    if kind == "randint" and not (lo.is_integer() and hi.is_integer()):
        raise ConfigError(f"{key}: randint bounds must be integers, got {list(args)}")
    return Dist(kind, (), lo, hi)


def parse_space(cfg: Config) -> dict[str, Dist]:
    """``cfg.tune.space`` as distributions; every candidate passes ``with_values`` (messages name the key)."""
    tc = cfg.tune
    if not tc.space:
        raise ConfigError("tune.space is empty: give dotted keys with candidate values, e.g. --set 'tune.space="
                          "{loss.cbdm: {uniform: [0.5, 2.0]}, guidance.cfg.omega: [0.0, 1.0]}'")
    if tc.searcher not in SEARCHERS:
        raise ConfigError(f"tune.searcher={tc.searcher!r}: choose from {list(SEARCHERS)}")
    if tc.searcher == "optuna" and tc.search == "grid":
        raise ConfigError("tune.searcher=optuna picks every value itself: tune.search=grid cannot be combined "
                          "with it (use tune.search=choice, or tune.searcher=random for a grid)")
    out: dict[str, Dist] = {}
    for k, v in tc.space.items():
        key = f"tune.space.{k}"
        d = parse_dist(key, v)
        for c in d.candidates():
            try:
                with_values(cfg, {k: c})
            except ConfigError as e:
                raise ConfigError(f"{key}: {c!r} is not a valid value ({e})") from None
        out[k] = d
    return out


def sample(d: Dist, rng: random.Random) -> Any:
    """One draw of ``d`` (lists included: the sequential launcher's random search)."""
    if d.categorical:
        return rng.choice(list(d.values))
    if d.kind == "uniform":
        return rng.uniform(d.lo, d.hi)
    if d.kind == "loguniform":
        return math.exp(rng.uniform(math.log(d.lo), math.log(d.hi)))
    return rng.randint(int(d.lo), int(d.hi))


def optuna_distribution(d: Dist):
    """The Optuna distribution of ``d`` (for ask/tell in the sequential launcher)."""
    import optuna

    if d.categorical:
        return optuna.distributions.CategoricalDistribution(list(d.values))
    if d.kind == "randint":
        return optuna.distributions.IntDistribution(int(d.lo), int(d.hi))
    return optuna.distributions.FloatDistribution(d.lo, d.hi, log=d.kind == "loguniform")


def require_optuna(searcher: str) -> None:
    """``tune.searcher=optuna`` without the package: one clear line, before any work."""
    if searcher != "optuna":
        return
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError("tune.searcher=optuna needs the optuna package: pip install 'ltaug[tune]' "
                          "(or use tune.searcher=random)") from None


__all__ = ["Dist", "KINDS", "SEARCHERS", "as_dist", "parse_dist", "parse_space", "sample", "optuna_distribution",
           "require_optuna"]
