"""Config sections of generation, tuning and the end-to-end pipeline."""
from __future__ import annotations

from dataclasses import dataclass

from .schema import F


@dataclass(frozen=True)
class GenerateConfig:
    output_uri: str = F("", help="where shards go (local or s3://); default <run dir>/shards")
    target_per_class: int = F(0, ge=0, help="top every class up to this count (0 = the head count)")
    budget: tuple[int, ...] = F((), help="explicit per-class number of images (overrides target_per_class)")
    shard_size: int = F(256, ge=1, help="samples per shard")
    batch_size: int = F(64, ge=1, help="rows per generator actor call")
    seed: int = F(0, help="generation seed (row seeds derive from it and the row id)")


@dataclass(frozen=True)
class TuneConfig:
    num_samples: int = F(4, ge=1, help="trials")
    objective: str = F("tail_fid", choices=("tail_fid", "few_acc"), help="objective")
    max_concurrent: int = F(1, ge=1, help="concurrent trials")
    grace_period: int = F(1, ge=1, help="ASHA grace period (reports)")
    reports: int = F(4, ge=1, help="reports per trial (ASHA rungs)")
    space: dict[str, tuple[float, ...]] = F(default_factory=dict,
                                             help="dotted key -> candidate values (grid/choice)")


@dataclass(frozen=True)
class PipelineConfig:
    classical: tuple[str, ...] = F(("resample", "balanced_softmax"), help="classical baselines to run")
    diffusion_steps: int = F(0, ge=0, help="diffusion training steps in the pipeline (0 = train.steps)")
    shards: str = F("", help="existing shards: skip generation")
