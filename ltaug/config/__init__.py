"""ltaug configuration: one frozen root dataclass, strict YAML loading, ``--set`` overrides."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import yaml

from .classify import ClassifierConfig, EvalConfig, FilterConfig
from .data import DataConfig, ResourcesConfig, RunConfig, TrackingConfig
from .diffusion import (DiffusionConfig, GuidanceConfig, LossConfig, ModelConfig, SampleConfig,
                        TrainConfig)
from .generate import GenerateConfig, PipelineConfig, TuneConfig
from .schema import (ConfigError, F, apply_overrides, apply_values, build, describe, flatten, secret_keys,
                     to_dict, yaml_load)


@dataclass(frozen=True)
class Config:
    seed: int = F(0, help="global seed")
    data: DataConfig = F(default_factory=DataConfig)
    run: RunConfig = F(default_factory=RunConfig)
    tracking: TrackingConfig = F(default_factory=TrackingConfig)
    resources: ResourcesConfig = F(default_factory=ResourcesConfig)
    model: ModelConfig = F(default_factory=ModelConfig)
    diffusion: DiffusionConfig = F(default_factory=DiffusionConfig)
    loss: LossConfig = F(default_factory=LossConfig)
    train: TrainConfig = F(default_factory=TrainConfig)
    sample: SampleConfig = F(default_factory=SampleConfig)
    guidance: GuidanceConfig = F(default_factory=GuidanceConfig)
    classifier: ClassifierConfig = F(default_factory=ClassifierConfig)
    filter: FilterConfig = F(default_factory=FilterConfig)
    eval: EvalConfig = F(default_factory=EvalConfig)
    generate: GenerateConfig = F(default_factory=GenerateConfig)
    tune: TuneConfig = F(default_factory=TuneConfig)
    pipeline: PipelineConfig = F(default_factory=PipelineConfig)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict (safe loading, repeated keys refused); errors name the file."""
    from ..storage import read_bytes, redact
    from .schema import MAX_YAML_BYTES

    try:
        raw = read_bytes(str(path), max_bytes=MAX_YAML_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as e:       # a directory, a device, too big, unreachable storage
        raise ConfigError(f"--config {path}: cannot read it ({redact(str(e))})") from None
    data = yaml_load(raw, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


ConfigPaths = Union[str, Path, Sequence[Union[str, Path]], None]


def _as_paths(paths: ConfigPaths) -> list[str]:
    if paths is None:
        return []
    if isinstance(paths, (str, Path)):
        return [str(paths)] if str(paths) else []
    return [str(p) for p in paths if str(p)]


def load_config(paths: ConfigPaths = None, overrides: Sequence[str] = ()) -> Config:
    """See :func:`load_config_sources` (without the provenance)."""
    return load_config_sources(paths, overrides)[0]


def load_config_sources(paths: ConfigPaths = None, overrides: Sequence[str] = ()) -> tuple[Config, dict[str, str]]:
    """The config of YAML files ``paths`` (none, one, or several layered) and ``--set`` ``overrides``.

    Layering: later files deep-merge over earlier ones (a section in a later file updates the keys it
    names and leaves the others; a list or a mapping-valued field such as ``tune.space`` is one value and
    is replaced whole), then each ``KEY=VALUE`` override applies in order. Every key is checked against
    the schema as it is applied (:func:`~ltaug.config.schema.assign`, the same core as :func:`with_values`),
    then :func:`~ltaug.config.schema.build` validates the values. Errors name the file or the ``--set``
    that gave the offending key. Also returns ``{dotted key: the file or --set that set it}``.
    """
    files = _as_paths(paths)
    data: dict[str, Any] = {}
    provenance: dict[str, str] = {}
    for path in files:
        layer = load_yaml(path)
        try:
            data = apply_values(data, Config, (([k], v) for k, v in layer.items()), provenance=provenance,
                                source=path)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    data = apply_overrides(data, list(overrides), Config, provenance=provenance)
    try:
        return build(Config, data), provenance
    except ConfigError as e:
        raise ConfigError(_name_source(str(e), provenance, files)) from None


# Keys the resolved config ignores: (ignored key, the key that wins, when it wins, jobs it applies to (() = all)).
# Only clear cases; the keys of a switched-off guidance (scale 0) are fine to set and are not listed.
IGNORED_KEYS: tuple[tuple[str, str, Any, tuple[str, ...]], ...] = (
    ("classifier.steps", "classifier.epochs", lambda c: c.classifier.epochs > 0, ()),
    ("sample.eta", "sample.sampler", lambda c: c.sample.sampler == "ddpm", ()),
    ("sample.variance", "sample.sampler", lambda c: c.sample.sampler == "ddim", ()),
    ("train.sample_every", "train.steps", lambda c: c.train.sample_every >= c.train.steps, ()),
    ("train.steps", "pipeline.diffusion_steps", lambda c: c.pipeline.diffusion_steps > 0, ("pipeline",)),
    ("train.steps", "tune.train_steps", lambda c: c.tune.train_steps > 0, ("tune",)),
)


def ignored_keys(cfg: Config, given: Mapping[str, str] | Sequence[str], job: str = "") -> list[str]:
    """One warning per key the user set (``given``: dotted keys, e.g. the provenance of
    :func:`load_config_sources`) that ``cfg`` ignores for ``job``, naming the key that wins."""
    out = []
    for key, winner, when, jobs in IGNORED_KEYS:
        if key in given and (not jobs or job in jobs) and when(cfg):
            section, name = winner.split(".")
            value = getattr(getattr(cfg, section), name)
            src = f" (from {given[key]})" if isinstance(given, Mapping) and given[key] else ""
            out.append(f"{key}{src} is ignored: {winner}={value} wins")
    return out


_KEY_AT_START = re.compile(r"[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*")


def _name_source(message: str, provenance: dict[str, str], files: list[str]) -> str:
    """Prefix a validation error with the file / ``--set`` that set its key (else the files loaded)."""
    m = _KEY_AT_START.match(message)
    if m:
        parts = m.group(0).split(".")
        for n in range(len(parts), 0, -1):
            src = provenance.get(".".join(parts[:n]))
            if src:
                return message if message.startswith(src) else f"{src}: {message}"
    return f"{', '.join(files)}: {message}" if files else message


def from_dict(data: dict[str, Any]) -> Config:
    return build(Config, data)


def with_values(cfg: Config, values: Mapping[str, Any]) -> Config:
    """A copy of ``cfg`` with typed values at dotted keys (``{"classifier.method": "ce"}``), re-validated.

    The same core as ``--set`` (:func:`~ltaug.config.schema.assign`): an unknown key is an error naming
    the dotted key and the allowed keys of its section; a mapping for a section updates its keys; a
    mapping-valued field (``tune.space``) takes a whole mapping.
    """
    return build(Config, apply_values(to_dict(cfg), Config, values.items()))


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(public_dict(cfg), sort_keys=False)


def public_dict(cfg: Config) -> dict[str, Any]:
    """The config as a dict with secret fields removed and credentials inside URIs redacted
    (``tracking.uri=http://user:password@host`` -> ``http://user:***@host``): for logs, MLflow, written
    configs, checkpoints and ``--dry-run``."""
    from ..storage import redact_obj

    d = redact_obj(to_dict(cfg))
    for key in secret_keys(Config):
        node = d
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node.pop(last, None)
    return d


def flat_params(cfg: Config) -> dict[str, Any]:
    """Flat ``{dotted.key: value}`` params for MLflow, secrets excluded, lists as strings."""
    return {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in flatten(public_dict(cfg)).items()}


def digest(cfg: Config | dict[str, Any], length: int = 10) -> str:
    """Stable short digest of a config (or a sub-dict): names runs so that re-runs resume."""
    d = public_dict(cfg) if isinstance(cfg, Config) else cfg
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:length]


__all__ = ["Config", "ConfigError", "load_config", "load_config_sources", "ignored_keys", "IGNORED_KEYS", "load_yaml", "from_dict", "config_to_yaml", "public_dict",
           "flat_params", "digest", "with_values", "describe", "DataConfig", "RunConfig", "TrackingConfig",
           "ResourcesConfig", "ModelConfig", "DiffusionConfig", "LossConfig", "TrainConfig",
           "SampleConfig", "GuidanceConfig", "ClassifierConfig", "FilterConfig", "EvalConfig",
           "GenerateConfig", "TuneConfig", "PipelineConfig"]
