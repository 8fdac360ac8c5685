"""Strict configuration machinery: frozen dataclasses <- YAML / dicts / ``--set`` overrides.

Every field is declared with :func:`F`, which records its allowed range or choices. Loading is strict:
an unknown key, a wrong type or a value out of range raises :class:`ConfigError` naming the dotted key
and what is allowed. Nothing is coerced silently except ints into float fields and YAML's own scalars.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Mapping

import yaml


class ConfigError(ValueError):
    """A bad configuration value; the message names the dotted key and what is allowed."""


def F(default: Any = MISSING, *, ge: float | None = None, gt: float | None = None,
      le: float | None = None, lt: float | None = None, choices: tuple | None = None,
      help: str = "", secret: bool = False, default_factory: Any = MISSING) -> Any:
    """A config field with validation metadata (range, choices) and a one-line help text."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "help": help, "secret": secret}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples (immutable) for sequence defaults")
    return field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_range(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {list(choices)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: {value!r} is not a finite number")
        bounds = [("ge", ">=", lambda a, b: a >= b), ("gt", ">", lambda a, b: a > b),
                  ("le", "<=", lambda a, b: a <= b), ("lt", "<", lambda a, b: a < b)]
        for name, sym, ok in bounds:
            b = meta.get(name)
            if b is not None and not ok(value, b):
                raise ConfigError(f"{key}: {value!r} is out of range; allowed: {_range_text(meta)}")


def _range_text(meta: Mapping[str, Any]) -> str:
    parts = []
    for name, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if meta.get(name) is not None:
            parts.append(f"{sym} {meta[name]}")
    return " and ".join(parts) or "any"


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in canonical (immutable) form."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, a, value)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} does not match {_type_name(tp)}")
    if is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, got {value!r}")
        return build(tp, value, prefix=key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{key}[{i}]", args[0], v) for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(f"{key}[{i}]", a, v) for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return types.MappingProxyType({_coerce(f"{key}.<key>", kt, k): _coerce(f"{key}.{k}", vt, v)
                                       for k, v in value.items()})
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def build(cls: type, data: Mapping[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, strictly (unknown keys, types and ranges checked)."""
    data = dict(data or {})
    hints = _hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = prefix or "<root>"
        raise ConfigError(f"unknown key {_join(prefix, unknown[0])!r} in {where}; "
                          f"allowed keys: {sorted(names)}")
    kwargs = {}
    for f in fields(cls):
        key = _join(prefix, f.name)
        if f.name in data:
            value = _coerce(key, hints[f.name], data[f.name])
        elif f.default is not MISSING:
            value = f.default
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            value = f.default_factory()  # type: ignore[misc]
        else:
            raise ConfigError(f"{key}: required")
        _check_range(key, value, f.metadata)
        kwargs[f.name] = value
    obj = cls(**kwargs)
    post = getattr(obj, "validate", None)
    if post is not None:
        post(prefix)
    return obj


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def to_dict(obj: Any) -> Any:
    """Plain nested dict/list form of a config (for YAML, JSON and equality)."""
    if is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def secret_keys(cls: type, prefix: str = "") -> set[str]:
    """Dotted keys of fields marked ``secret=True`` (never logged, never written out)."""
    out: set[str] = set()
    hints = _hints(cls)
    for f in fields(cls):
        key = _join(prefix, f.name)
        if f.metadata.get("secret"):
            out.add(key)
        tp = hints[f.name]
        if is_dataclass(tp):
            out |= secret_keys(tp, key)
    return out


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"data.source": "digits", ...}``: flat params (for MLflow)."""
    out: dict[str, Any] = {}
    d = to_dict(obj) if is_dataclass(obj) else obj
    for k, v in d.items():
        key = _join(prefix, k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> (["a", "b"], 3); the value is parsed as a YAML scalar / flow list."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {e}") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides onto a nested dict (unknown keys are caught later by :func:`build`)."""
    out = _deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"--set {'.'.join(parts)}: {p!r} is a value, not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def replace(obj: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` that re-validates through :func:`build`."""
    d = to_dict(obj)
    d.update(changes)
    return build(type(obj), d)


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) rows for every leaf field: used by ``--help``-style listings."""
    rows = []
    hints = _hints(cls)
    for f in fields(cls):
        key = _join(prefix, f.name)
        tp = hints[f.name]
        if is_dataclass(tp):
            rows += describe(tp, key)
            continue
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None)  # type: ignore[misc]
        meta = f.metadata
        allowed = list(meta["choices"]) if meta.get("choices") else _range_text(meta)
        help_text = meta.get("help", "")
        rows.append((key, _type_name(tp), to_dict(default), f"{help_text} [allowed: {allowed}]"))
    return rows


__all__ = ["ConfigError", "F", "build", "to_dict", "flatten", "apply_overrides", "parse_override",
           "replace", "describe", "secret_keys", "dataclass", "dataclasses"]
