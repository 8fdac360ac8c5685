"""Config sections owned by the foundation: data, run, tracking, resources."""
from __future__ import annotations

from dataclasses import dataclass

from .schema import ConfigError, F

SOURCES = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder", "imagenet_lt", "webdataset")
BENCHMARK_SOURCES = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100")  # balanced: cut to a long tail
USER_SOURCES = ("imagefolder", "imagenet_lt", "webdataset")     # your own data: kept as it is unless asked
SOURCE_DEFAULT_RATIO = {**{s: 10.0 for s in BENCHMARK_SOURCES}, **{s: 1.0 for s in USER_SOURCES}}


@dataclass(frozen=True)
class DataConfig:
    source: str = F("digits", choices=SOURCES, help="dataset source")
    root: str = F("", help="local path or s3:// URI of the dataset (unused for digits)")
    imbalance_ratio: float = F(0.0, ge=0.0,
                               help="r = n_max / n_min of the long-tailed train set; 1 = keep every image (the natural "
                                    "distribution); 0 = the source's default: 10 for the balanced benchmark sources "
                                    "(digits, mnist, fashion_mnist, cifar10, cifar100), 1 for your own data "
                                    "(imagefolder, imagenet_lt, webdataset: never re-cut unless you ask)")
    profile: str = F("exp", choices=("exp", "step"), help="long-tail profile: exponential (Cao et al.) or step")
    step_fraction: float = F(0.5, gt=0.0, lt=1.0, help="step profile: fraction of classes that are minority")
    max_per_class: int = F(0, ge=0, help="n_max: head-class count before the profile (0 = all available)")
    selection_seed: int = F(0, help="seed of the per-class selection (CIFAR-LT protocol uses 0)")
    image_size: int = F(16, ge=4, le=1024, help="side length in pixels after resizing")
    channels: int = F(0, choices=(0, 1, 3), help="0 = the source's own, 1 = gray, 3 = colour")
    test_per_class: int = F(0, ge=0, help="cap on test images per class (0 = all); test sets stay balanced")
    val_per_class: int = F(20, ge=0, help="validation images per class, disjoint from train and test, drawn first from the "
                                          "train-split images the long-tail profile leaves unused (20 = ImageNet-LT's "
                                          "official val size, Liu et al. 2019); every selection uses them; 0 = no validation split")
    val_max_holdout: float = F(0.2, ge=0.0, lt=1.0,
                               help="when the profile leaves a class fewer than data.val_per_class unused images, hold "
                                    "the rest out of its train images, at most this fraction of them (reported); "
                                    "0 = never (train counts stay exactly the profile's; that class's val set is smaller)")
    digits_test_per_class: int = F(50, ge=1, le=150, help="digits only: images per class held out as the test set")
    groups: str = F("auto", choices=("auto", "thresholds", "terciles"),
                    help="many/medium/few by absolute thresholds, by terciles, or auto (terciles when thresholds leave a group empty)")
    many_threshold: int = F(100, ge=1, help="many: more than this many training images")
    few_threshold: int = F(20, ge=1, help="few: fewer than this many training images")
    on_bad_record: str = F("error", choices=("error", "skip"), help="corrupt record: stop with an error, or skip, count and log it")
    num_classes: int = F(0, ge=0, help="imagefolder / imagenet_lt / webdataset: number of classes (0 = infer)")
    train_list: str = F("ImageNet_LT_train.txt", help="imagenet_lt: train list file (relative to root)")
    test_list: str = F("ImageNet_LT_test.txt", help="imagenet_lt: test list file (relative to root)")
    cache_dir: str = F("", help="where dataset artifacts are cached (local or s3://); '' = <run.output_dir>/datasets")

    @property
    def ratio(self) -> float:
        """The imbalance ratio in effect: ``imbalance_ratio``, or the source's default when it is 0."""
        return float(self.imbalance_ratio) or SOURCE_DEFAULT_RATIO[self.source]

    def validate(self, prefix: str) -> None:
        if 0.0 < self.imbalance_ratio < 1.0:
            raise ConfigError(f"{prefix}.imbalance_ratio: {self.imbalance_ratio!r} is out of range; allowed: 0 "
                              f"(the source's default) or >= 1.0")
        if self.few_threshold > self.many_threshold:
            raise ConfigError(f"{prefix}.few_threshold ({self.few_threshold}) must be <= "
                              f"{prefix}.many_threshold ({self.many_threshold})")
        if self.source != "digits" and not self.root:
            raise ConfigError(f"{prefix}.root: required for data.source={self.source!r} (a local path or s3:// URI)")


@dataclass(frozen=True)
class RunConfig:
    output_dir: str = F("runs", help="where runs go (local path or s3://)")
    name: str = F("", help="run name (default: job name + config digest, stable so re-runs resume)")
    shared_fs: bool = F(False, help="the local paths in run.output_dir / generate.output_uri / data.cache_dir / a "
                                    "sqlite: tracking.uri are on a mount shared by every Ray node; without it a "
                                    "cluster of more than one alive node refuses them before any work (use s3:// "
                                    "and an http:// tracking server instead)")


@dataclass(frozen=True)
class TrackingConfig:
    uri: str = F("", help="MLflow tracking URI: an http(s):// tracking server (artifacts go to the server's artifact "
                          "store), sqlite:///<abs path>, or 'none' (off); '' = $MLFLOW_TRACKING_URI when set, else an "
                          "embedded SQLite store inside run.output_dir (one machine only: refused on a multi-node "
                          "cluster unless run.shared_fs=true)")
    experiment: str = F("ltaug", help="MLflow experiment name")


@dataclass(frozen=True)
class ResourcesConfig:
    num_workers: int = F(0, ge=0, help="Ray Train workers / Ray Data generator actors (0 = in-process without Ray; >= 1 starts or joins a Ray cluster)")
    use_gpu: bool = F(False, help="use GPUs (one per worker / actor)")
    cpus_per_worker: float = F(1.0, gt=0.0, help="CPUs reserved per worker / actor")
    placement: str = F("pack", choices=("pack", "spread"),
                       help="Ray Train workers: 'pack' fills a node before the next (fastest collectives), 'spread' puts "
                            "them on as many nodes as possible (one per node when they fit: more host memory and disk "
                            "bandwidth per worker, survives a node loss with fewer restarts)")
    max_failures: int = F(2, ge=-1, help="Ray Train / Data retries after a worker failure (-1 = forever)")
    ray_address: str = F("", help="Ray cluster address ('' = local or RAY_ADDRESS)")
