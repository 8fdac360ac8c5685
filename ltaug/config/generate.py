"""Config sections of generation, tuning and the end-to-end pipeline."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .classify import METHODS as CLASSIFIER_METHODS
from .schema import ConfigError, F


@dataclass(frozen=True)
class GenerateConfig:
    output_uri: str = F("", help="where shards go (local or s3://); default <run dir>/shards")
    target_per_class: int = F(0, ge=0, help="top every class up to this count (0 = the head count)")
    budget: tuple[int, ...] = F((), help="explicit per-class number of images (overrides target_per_class)")
    counts: tuple[int, ...] = F((), help="real per-class counts the plan tops up (empty = the counts stored in "
                                         "model.checkpoint, else the configured dataset)")
    shard_size: int = F(256, ge=1, help="samples per shard (a shard is the unit of work, retry and atomic publish)")
    shard_target_mb: float = F(0.0, ge=0.0, help="size shards for training reads: samples per shard = this target "
                                                 "over the estimated tar bytes of one sample at the checkpoint's "
                                                 "image shape (overrides shard_size; 0 = use shard_size)")
    max_shard_retries: int = F(3, ge=0, help="times a shard whose producer raises is tried again (in the same "
                                             "worker) before the job fails naming the shard")
    max_rounds: int = F(1, ge=1, help="refill: rounds of generation; after a round, classes the filter left below "
                                      "their target get a further round (new seeds), up to this many in all")
    batch_size: int = F(64, ge=1, help="rows per generator call (does not change any image)")
    seed: int = F(0, help="generation seed (row seeds derive from it, the class and the index in the class)")
    minority_score: bool = F(True, help="record each image's minority score (Um et al. 2024) in its json")
    score_iters: int = F(2, ge=1, help="Monte-Carlo draws of the minority score")
    max_in_flight: int = F(0, ge=0, help="Ray: shards queued per actor (0 = Ray's default)")
    encode_cpus: float = F(1.0, gt=0.0, help="Ray: CPUs of each encoder actor, the stage after the samplers that "
                                             "makes the filter's keep decision, encodes PNGs, builds and publishes "
                                             "each tar (one PUT) while the samplers go on; the cluster needs "
                                             "resources.num_workers x resources.cpus_per_worker + this many CPUs")

    def validate(self, prefix: str) -> None:
        if any(b < 0 for b in self.budget):
            raise ConfigError(f"{prefix}.budget: {list(self.budget)} has a negative entry")
        if any(c < 0 for c in self.counts):
            raise ConfigError(f"{prefix}.counts: {list(self.counts)} has a negative entry")


@dataclass(frozen=True)
class TuneConfig:
    num_samples: int = F(4, ge=1, help="trials (x the grid when tune.search=grid)")
    objective: str = F("val_tail_fid", choices=("val_tail_fid", "val_few_acc", "tail_fid", "few_acc"),
                       help="val_tail_fid: FID of generated few-class images against the few classes' *validation* "
                            "images (never the training images); tail_fid/few_acc are retired names (an error says "
                            "why); val_few_acc is not available yet")
    max_concurrent: int = F(1, ge=1, help="concurrent trials (Ray; also the Optuna searcher's concurrency limit)")
    grace_period: int = F(0, ge=0, help="ASHA grace period in diffusion training steps: no trial is stopped before "
                                        "it has trained this many (0 = one report's worth, tune.train_steps / "
                                        "tune.reports); at most the trial's steps")
    reports: int = F(4, ge=1, help="reports per trial (each after a chunk of training; ASHA decides on their step)")
    search: str = F("choice", choices=("choice", "grid"),
                    help="list values of tune.space: one random pick per trial, or a full grid (x num_samples)")
    searcher: str = F("random", choices=("random", "optuna"),
                      help="random (seeded draws), or optuna (TPE; needs pip install 'ltaug[tune]'; not with "
                           "tune.search=grid)")
    space: dict[str, tuple[Any, ...] | dict[str, Any]] = F(default_factory=dict,
                              help="dotted key -> a list of values, or {choice: [...]}, {uniform: [lo, hi]}, "
                                   "{loguniform: [lo, hi]}, {randint: [lo, hi]} (ends included), e.g. "
                                   "{loss.cbdm: {uniform: [0.5, 2]}, guidance.minority.start: [0, 0.5]}")
    train_steps: int = F(0, ge=0, help="diffusion steps per trial (0 = train.steps)")
    num_per_class: int = F(16, ge=1, help="images per tail class generated for the objective")
    trial_cpus: float = F(1.0, gt=0.0, help="CPUs reserved per trial (its Train worker)")
    time_budget_s: float = F(0.0, ge=0.0, help="stop the sweep after this many seconds (0 = no limit)")
    preset_uri: str = F("", help="where the best config is written as YAML (default <run dir>/best.yaml)")


@dataclass(frozen=True)
class PipelineConfig:
    classical: tuple[str, ...] = F(("resample", "balanced_softmax"),
                                   help="classical long-tail baselines trained on the real data only (classifier.method names)")
    baseline_method: str = F("ce", choices=CLASSIFIER_METHODS,
                             help="method of the baseline classifier (its features also drive AID, the filter and the metrics)")
    augmented_method: str = F("ce", choices=CLASSIFIER_METHODS,
                              help="method of the downstream classifier trained on real + synthetic (DiffuLT: ce)")
    diffusion_steps: int = F(0, ge=0, help="diffusion training steps in the pipeline (0 = train.steps)")
    shards: str = F("", help="existing shards (local or s3://): skip generation")
    seeds: tuple[int, ...] = F((), help="run every classifier stage (baseline, classical, augmented) once per seed "
                                        "(root seed=<s>, child runs <stage>-s<s>); the summary holds the mean, "
                                        "the sample std and per-seed rows (empty = one run at the config's seed)")
    seed_diffusion: bool = F(False, help="with pipeline.seeds: also train the diffusion model and generate the "
                                         "shards once per seed (seed=<s>, generate.seed=<s>); false = one "
                                         "diffusion model and one shard set shared by all seeds")
    gate_scales: tuple[float, ...] = F((), help="quality gate before generation: sample these guidance.minority.scale "
                                                "values and 0 with the same seeds (eval.num_per_class per class), score "
                                                "them on the validation split and generate with the largest scale whose "
                                                "class consistency stays within 2 points and precision within 10% of "
                                                "unguided (child run gate; minority_gate.json/.png); empty = "
                                                "guidance.minority.scale as configured")
    gate_per_class: int = F(0, ge=0, help="samples per class of each gate scale (0 = eval.num_per_class); many-class "
                                          "datasets (ImageNet-LT) gate on fewer")

    def validate(self, prefix: str) -> None:
        bad = [v for v in self.gate_scales if not v >= 0]
        if bad:
            raise ConfigError(f"{prefix}.gate_scales: {bad[0]} is not a scale (guidance scales are >= 0)")
        allowed = CLASSIFIER_METHODS
        bad = [m for m in self.classical if m not in allowed]
        if bad:
            raise ConfigError(f"{prefix}.classical: {bad[0]!r} is not allowed; choose from {list(allowed)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"{prefix}.seeds: {list(self.seeds)} repeats a seed")
        if any(s < 0 for s in self.seeds):
            raise ConfigError(f"{prefix}.seeds: {list(self.seeds)} has a negative seed")
