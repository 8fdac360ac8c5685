"""ltaug configuration: one frozen root dataclass, strict YAML loading, ``--set`` overrides."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from .classify import ClassifierConfig, EvalConfig, FilterConfig
from .data import DataConfig, ResourcesConfig, RunConfig, TrackingConfig
from .diffusion import (DiffusionConfig, GuidanceConfig, LossConfig, ModelConfig, SampleConfig,
                        TrainConfig)
from .generate import GenerateConfig, PipelineConfig, TuneConfig
from .schema import (ConfigError, F, apply_overrides, build, describe, flatten, secret_keys,
                     to_dict)


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
    """Read a YAML config file into a dict; errors name the file."""
    from ..storage import open_uri

    try:
        with open_uri(str(path), "rb") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load ``path`` (YAML, optional) with ``--set`` overrides applied, strictly validated."""
    data = load_yaml(path) if path else {}
    try:
        data = apply_overrides(data, list(overrides))
        return build(Config, data)
    except ConfigError as e:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}{e}") from None


def from_dict(data: dict[str, Any]) -> Config:
    return build(Config, data)


def with_values(cfg: Config, values: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with dotted keys replaced (``{"classifier.method": "ce"}``), re-validated."""
    d = to_dict(cfg)
    for key, value in values.items():
        node = d
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        if last not in node:
            raise ConfigError(f"unknown key {key!r}")
        node[last] = value
    return build(Config, d)


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(public_dict(cfg), sort_keys=False)


def public_dict(cfg: Config) -> dict[str, Any]:
    """The config as a dict with secret fields removed (for logs, MLflow and written configs)."""
    d = to_dict(cfg)
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


__all__ = ["Config", "ConfigError", "load_config", "from_dict", "config_to_yaml", "public_dict",
           "flat_params", "digest", "with_values", "describe", "DataConfig", "RunConfig", "TrackingConfig",
           "ResourcesConfig", "ModelConfig", "DiffusionConfig", "LossConfig", "TrainConfig",
           "SampleConfig", "GuidanceConfig", "ClassifierConfig", "FilterConfig", "EvalConfig",
           "GenerateConfig", "TuneConfig", "PipelineConfig"]
