"""Strict configuration machinery: frozen dataclasses <- YAML / dicts / ``--set`` overrides.

Every field is declared with :func:`F`, which records its allowed range or choices. Loading is strict:
an unknown key, a wrong type or a value out of range raises :class:`ConfigError` naming the dotted key
and what is allowed. Nothing is coerced silently except ints into float fields and YAML's own scalars.

One path sets dotted keys: :func:`assign` (every key checked against the schema as it is set). Typed
values (``with_values``), ``KEY=VALUE`` strings (:func:`parse_assignment` then :func:`assign`) and layered
YAML files (each top-level mapping merged through :func:`assign`) all go through it; :func:`build` then
validates the values.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Iterable, Mapping, Sequence

import yaml


MAX_INT = 2 ** 63  # integer config values must fit int64 (numpy / torch), else they overflow far from the config


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
    if typing.get_origin(tp) is not None:      # tuple[int, ...], int | None, dict[str, ...]
        return str(tp).replace("typing.", "")
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


class FrozenDict(dict):
    """A read-only mapping for dict-valued config fields (frozen like the dataclasses, and picklable so a
    config travels to worker processes; ``types.MappingProxyType`` cannot be pickled)."""

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("config mappings are read-only; use ltaug.config.with_values")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _read_only  # type: ignore[assignment]

    def __reduce__(self):
        return (FrozenDict, (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=repr)))


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
        return FrozenDict({_coerce(f"{key}.<key>", kt, k): _coerce(f"{key}.{k}", vt, v)
                                       for k, v in value.items()})
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and abs(value) < MAX_INT:
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if not -MAX_INT <= value < MAX_INT:
            raise ConfigError(f"{key}: {value} is too large (integers must fit in 64 bits)")
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


# --------------------------------------------------------------------------------- YAML, strictly


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no Python tags) that :func:`yaml_load` uses after checking that no mapping
    repeats a key (PyYAML would silently keep the last one). It also reads exponent floats without a dot
    (``1e-4``, YAML 1.2) as numbers, where YAML 1.1 would make them strings."""


StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _duplicate_key(node: yaml.Node) -> str | None:
    """The first repeated mapping key under ``node``, as a dotted path with its lines, or None."""
    seen_nodes: set[int] = set()

    def walk(n: yaml.Node, path: str) -> str | None:
        if id(n) in seen_nodes:     # composing makes one node per event, so a node met twice is an alias
            return (f"YAML alias at {path or 'the top level'} (repeating the node anchored at line "
                    f"{n.start_mark.line + 1}); anchors and "
                    f"aliases (&name / *name) are not allowed in configs: write the value out")
        seen_nodes.add(id(n))
        if isinstance(n, yaml.MappingNode):
            lines: dict[tuple[str, str], int] = {}
            for k, v in n.value:
                if k.tag == "tag:yaml.org,2002:merge" or not isinstance(k, yaml.ScalarNode):
                    found = walk(v, path)   # merged keys may be overridden explicitly (YAML merge semantics)
                else:
                    ident = (k.tag, k.value)
                    key = _join(path, str(k.value))
                    if ident in lines:
                        return (f"duplicate key {key!r} (lines {lines[ident]} and {k.start_mark.line + 1}); "
                                f"each key may appear once per mapping")
                    lines[ident] = k.start_mark.line + 1
                    found = walk(v, key)
                if found:
                    return found
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                found = walk(v, f"{path}[{i}]")
                if found:
                    return found
        return None

    return walk(node, "")


MAX_YAML_BYTES = 1 << 20   # a config (or one --set value) is small text; anything bigger is refused


def yaml_load(text: str | bytes, where: str) -> Any:
    """Safe-load one YAML document; a repeated mapping key or an alias (``*name``: alias bombs, recursive
    aliases) is a :class:`ConfigError` naming ``where`` and the key."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: {len(text)} bytes; a config may hold at most {MAX_YAML_BYTES}")
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        dup = _duplicate_key(node)
        if dup:
            raise ConfigError(f"{where}: {dup}")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be a config") from None
    finally:
        loader.dispose()


# ------------------------------------------------------------------- the one way to set dotted keys


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"a.b=3"`` -> ``("a.b", 3)``; the value is parsed as YAML (scalar, flow list or flow mapping)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key part")
    value = yaml_load(raw, f"--set {key}") if raw.strip() else ""
    return key, value


def _section_type(tp: Any) -> type | None:
    return tp if isinstance(tp, type) and is_dataclass(tp) else None


def _is_mapping_type(tp: Any) -> bool:
    return tp is dict or typing.get_origin(tp) is dict


def _plain(value: Any) -> Any:
    """A detached plain copy (dicts / lists / scalars) of a value about to be stored in a config dict."""
    if is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def unknown_key_error(cls: type, prefix: str, name: str) -> ConfigError:
    names = sorted(f.name for f in fields(cls))
    where = f"in {prefix}" if prefix else "at the top level"
    return ConfigError(f"unknown key {_join(prefix, str(name))!r}; allowed keys {where}: {names}")


def assign(data: dict[str, Any], cls: type, key: str | Sequence[str], value: Any, *,
           provenance: dict[str, str] | None = None, source: str = "", prefix: str = "") -> None:
    """Set dotted ``key`` to ``value`` in the nested dict ``data`` of dataclass ``cls``, in place.

    The only place where a key meets the schema before :func:`build`: every part of ``key`` must name a
    field of its section (else a :class:`ConfigError` naming the full dotted key and the allowed keys of
    that section). A mapping given for a section updates that section key by key (recursively, through
    this function); any other field takes the value whole: lists and mapping-valued fields such as
    ``tune.space`` are replaced, and ``field.entry`` sets one entry of a mapping-valued field. Values are
    checked later, by :func:`build`. ``provenance`` records ``{dotted leaf key: source}``. ``prefix``: the
    dotted key of section ``cls`` when ``data`` is that section's dict (for messages and provenance).
    """
    parts = key.split(".") if isinstance(key, str) else list(key)
    node, tp = data, cls
    for i, part in enumerate(parts):
        if part not in {f.name for f in fields(tp)}:
            raise unknown_key_error(tp, prefix, part)
        here = _join(prefix, part)
        ftp = _hints(tp)[part]
        sec = _section_type(ftp)
        rest = parts[i + 1:]
        if sec is not None:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            if rest:
                node, tp, prefix = child, sec, here
                continue
            if value is None:
                return                        # an empty section (``data:`` in YAML) changes nothing
            if not isinstance(value, (Mapping, sec)):
                raise ConfigError(f"{here}: expected a mapping of keys for section {here}, got {value!r}")
            items = to_dict(value).items() if isinstance(value, sec) else value.items()
            for k, v in items:
                assign(child, sec, [k], v, provenance=provenance, source=source, prefix=here)
            return
        if rest:
            if _is_mapping_type(ftp):         # one entry of a mapping-valued field: tune.space.train.lr=[...]
                entry = ".".join(rest)
                current = node.get(part)
                child = node[part] = _plain(current) if isinstance(current, Mapping) else {}
                child[entry] = _plain(value)
                if provenance is not None:
                    provenance[here] = source
                return
            full = _join(prefix, ".".join(map(str, parts[i:])))
            raise ConfigError(f"unknown key {full!r}: {here} is a value ({_type_name(ftp)}), not a section")
        node[part] = _plain(value)
        if provenance is not None:
            provenance[here] = source
        return


def apply_values(data: Mapping[str, Any], cls: type, values: Iterable[tuple[str, Any]], *,
                 provenance: dict[str, str] | None = None, source: str = "") -> dict[str, Any]:
    """A copy of nested dict ``data`` with ``(dotted key, value)`` pairs applied through :func:`assign`."""
    out = _plain(data)
    for key, value in values:
        assign(out, cls, key, value, provenance=provenance, source=source)
    return out


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str], cls: type, *,
                    provenance: dict[str, str] | None = None) -> dict[str, Any]:
    """``KEY=VALUE`` strings applied onto ``data`` (a nested dict of dataclass ``cls``): each is parsed by
    :func:`parse_assignment`, then set by :func:`assign` (the same core as :func:`apply_values`); errors
    are prefixed with ``--set KEY=VALUE``."""
    out = _plain(data)
    for text in overrides:
        key, value = parse_assignment(text)
        try:
            assign(out, cls, key, value, provenance=provenance, source=f"--set {text}")
        except ConfigError as e:
            raise ConfigError(f"--set {text}: {e}") from None
    return out


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


__all__ = ["ConfigError", "F", "build", "to_dict", "flatten", "assign", "apply_values", "apply_overrides",
           "parse_assignment", "yaml_load", "StrictLoader", "describe", "secret_keys", "dataclass", "dataclasses"]
