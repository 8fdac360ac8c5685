"""Config sections of the classifier side: classifier, filter, eval."""
from __future__ import annotations

from dataclasses import dataclass

from .schema import F

ARCHS = ("resnet20", "resnet32", "resnet56", "resnet10", "resnet18", "resnet50")
METHODS = ("ce", "resample", "balanced_softmax", "drw")


@dataclass(frozen=True)
class ClassifierConfig:
    checkpoint: str = F("", help="classifier checkpoint to load (local or s3://)")
    arch: str = F("resnet32", choices=ARCHS, help="architecture")
    method: str = F("ce", choices=METHODS, help="long-tail method")
    width: int = F(16, ge=4, help="CIFAR ResNet base width (16 = standard)")
    steps: int = F(1500, ge=0, help="optimisation steps of classifier training")
    batch_size: int = F(128, ge=1, help="per-step batch")
    lr: float = F(0.1, gt=0.0, help="SGD learning rate")
    momentum: float = F(0.9, ge=0.0, lt=1.0, help="SGD momentum")
    weight_decay: float = F(2e-4, ge=0.0, help="weight decay")
    milestones: tuple[float, ...] = F((0.8, 0.9), help="lr x0.1 at these fractions of training")
    warmup: float = F(0.025, ge=0.0, lt=1.0, help="linear warm-up as a fraction of training")
    drw_start: float = F(0.8, ge=0.0, le=1.0, help="DRW: re-weighting starts at this fraction")
    drw_beta: float = F(0.9999, ge=0.0, lt=1.0, help="DRW: effective-number beta")
    ema_decay: float = F(0.0, ge=0.0, lt=1.0, help="EMA decay (0 = off)")
    augment: bool = F(True, help="random crop + flip (flip off for gray digits)")
    radius: str = F("max", choices=("max", "quantile"), help="per-class radius d_f: max distance or a quantile")
    radius_quantile: float = F(0.95, gt=0.0, le=1.0, help="quantile for radius=quantile")
    synthetic_uri: str = F("", help="WebDataset shards (local or s3://) of synthetic images to mix in")
    synthetic_weight: float = F(0.3, ge=0.0, help="omega: loss weight of synthetic samples (DiffuLT)")
    synthetic_max_per_class: int = F(0, ge=0, help="per-class quota of synthetic samples (0 = all)")


@dataclass(frozen=True)
class FilterConfig:
    keep: tuple[str, ...] = F(("id", "aid"), help="categories kept: any of id, aid, ood")


@dataclass(frozen=True)
class EvalConfig:
    features: str = F("classifier", choices=("classifier", "inception"), help="feature space of generative metrics")
    inception_weights: str = F("", help="local Inception-v3 weights file (features=inception)")
    knn_k: int = F(5, ge=1, help="k of precision/recall, density/coverage, AvgkNN, rarity")
