"""Config sections of the classifier side: classifier, filter, eval.

The standard CIFAR-LT recipe (LDAM-DRW, Cao et al. 2019; used by DiffuLT): ResNet-32, SGD lr 0.1,
momentum 0.9, weight decay 2e-4, batch 128, 200 epochs, 5-epoch linear warm-up, and the learning rate
x0.01 after epoch 160 and x0.0001 after epoch 180 (kaidic/LDAM-DRW ``adjust_learning_rate``: each
milestone multiplies by 0.01). As overrides (what configs/cifar10-lt.yaml and cifar100-lt.yaml set):

    --set classifier.arch=resnet32 --set classifier.epochs=200 --set classifier.batch_size=128
    --set classifier.lr=0.1 --set classifier.momentum=0.9 --set classifier.weight_decay=2e-4
    --set classifier.milestones=[0.8,0.9] --set classifier.lr_gamma=0.01 --set classifier.warmup=0.025

(milestones and warm-up are fractions of training: 160/200, 180/200, 5/200). The defaults below are
the same recipe shortened to 150 steps of 64 so that the quickstart (digits) trains in seconds; the
warm-up share is longer (0.1), because a 4-step warm-up at lr 0.1 leaves such a short run unstable,
and the decay is the common x0.1 per milestone.
"""
from __future__ import annotations

from dataclasses import dataclass

from .schema import ConfigError, F

ARCHS = ("resnet20", "resnet32", "resnet56", "resnet10", "resnet18", "resnet50")
METHODS = ("ce", "resample", "balanced_softmax", "logit_adjust", "drw", "ldam_drw")
CATEGORIES = ("id", "aid", "ood")


@dataclass(frozen=True)
class ClassifierConfig:
    checkpoint: str = F("", help="classifier checkpoint to load (local or s3://; a ckpt-*.pt file or its directory). "
                                 "train_classifier: the baseline to compare against and to filter synthetic data with")
    arch: str = F("resnet32", choices=ARCHS, help="architecture: CIFAR ResNet-20/32/56, or torchvision-style ResNet-10/18/50")
    method: str = F("ce", choices=METHODS,
                    help="long-tail method: ce, resample (class-balanced sampling), balanced_softmax (Ren et al. 2020), "
                         "logit_adjust (Menon et al. 2021), drw (deferred re-weighting), ldam_drw (LDAM margins + DRW, "
                         "cosine last layer; Cao et al. 2019)")
    width: int = F(16, ge=4, help="CIFAR ResNet base width (16 = standard, ResNet-32 = 0.46M params)")
    steps: int = F(150, ge=0, help="optimisation steps of classifier training (ignored when epochs > 0)")
    epochs: float = F(0.0, ge=0.0, help="train for this many epochs of the real+synthetic set instead of steps "
                                        "(CIFAR-LT recipe: 200); 0 = use steps")
    batch_size: int = F(64, ge=1, help="per-step batch (CIFAR-LT recipe: 128)")
    optimizer: str = F("sgd", choices=("sgd", "adam", "adamw"), help="optimizer (CIFAR-LT recipe: sgd)")
    lr: float = F(0.1, gt=0.0, help="learning rate (CIFAR-LT recipe: SGD 0.1)")
    momentum: float = F(0.9, ge=0.0, lt=1.0, help="SGD momentum (optimizer=sgd only; CIFAR-LT recipe: 0.9)")
    weight_decay: float = F(2e-4, ge=0.0, help="weight decay (CIFAR-LT recipe: 2e-4)")
    milestones: tuple[float, ...] = F((0.8, 0.9), help="lr x classifier.lr_gamma at these fractions of training "
                                                       "(recipe: epochs 160, 180 of 200)")
    lr_gamma: float = F(0.1, gt=0.0, le=1.0, help="lr multiplier at each of classifier.milestones (LDAM-DRW recipe: "
                                                  "0.01, i.e. lr x0.01 after 160 and x0.0001 after 180 epochs)")
    grad_clip: float = F(0.0, ge=0.0, help="gradient-norm clip (0 = off; the CIFAR-LT recipe does not clip)")
    amp: bool = F(False, help="mixed precision where the device supports it (CUDA bf16/fp16)")
    grad_accum: int = F(1, ge=1, help="micro-batches per optimizer step (effective batch = batch_size x grad_accum x workers; DDP syncs gradients on the last one only); 1 = off")
    warmup: float = F(0.1, ge=0.0, lt=1.0, help="linear warm-up as a fraction of training (CIFAR-LT recipe: 0.025 = 5 of 200 "
                                                 "epochs; short runs need a longer share)")
    la_tau: float = F(1.0, ge=0.0, help="logit_adjust and balanced_softmax: tau of logits + tau * log prior "
                                        "(1 = balanced softmax; Menon et al. use 1)")
    drw_start: float = F(0.8, ge=0.0, le=1.0, help="drw, ldam_drw: re-weighting starts at this fraction of training "
                                                   "(LDAM-DRW: epoch 160 of 200)")
    drw_beta: float = F(0.9999, ge=0.0, lt=1.0, help="drw, ldam_drw: effective-number beta (LDAM-DRW: 0.9999)")
    ldam_max_margin: float = F(0.5, gt=0.0, help="ldam_drw: the largest class margin C / n_min^(1/4) (LDAM-DRW: 0.5)")
    ldam_scale: float = F(30.0, gt=0.0, help="ldam_drw: scale s of the cosine logits in the loss (LDAM-DRW: 30)")
    ema_decay: float = F(0.0, ge=0.0, lt=1.0, help="EMA decay of the weights (0 = off)")
    augment: str = F("auto", choices=("auto", "none", "crop", "crop_flip"),
                     help="train-time augmentation: random crop (pad size/8), optional horizontal flip; auto = crop_flip for colour, crop for gray")
    radius: str = F("max", choices=("max", "quantile"), help="feature bank radius d_f per class: max distance to the centre, or a quantile")
    radius_quantile: float = F(0.95, gt=0.0, le=1.0, help="quantile for radius=quantile")
    synthetic_uri: str = F("", help="WebDataset shards (local dir or s3:// prefix of *.tar) of synthetic images to mix in")
    synthetic_weight: float = F(0.3, ge=0.0, help="omega: loss weight of synthetic samples (DiffuLT: 0.3; 0.5 on ImageNet-LT)")
    synthetic_max_per_class: int = F(0, ge=0, help="per-class quota of synthetic samples (0 = no cap)")
    synthetic_fill_to: int = F(0, ge=0, help="take at most (this - real count) synthetic samples per class (0 = no cap)")
    eval_batch_size: int = F(256, ge=1, help="batch of evaluation / feature extraction")
    log_every: int = F(50, ge=1, help="log training metrics every n steps")
    ckpt_every: int = F(0, ge=0, help="write a checkpoint every n steps (0 = only at the end)")
    keep_checkpoints: int = F(2, ge=1, help="checkpoints kept (older ones deleted)")

    def validate(self, prefix: str) -> None:
        bad = [m for m in self.milestones if not 0.0 <= m <= 1.0]
        if bad:
            raise ConfigError(f"{prefix}.milestones: {list(self.milestones)} must be fractions in [0, 1]")


@dataclass(frozen=True)
class FilterConfig:
    keep: tuple[str, ...] = F(("id", "aid"), help="DiffuLT categories kept: any of id, aid, ood (default drops OOD)")
    apply: bool = F(False, help="train_classifier: also filter classifier.synthetic_uri with the feature bank of "
                                "classifier.checkpoint before mixing it in")

    def validate(self, prefix: str) -> None:
        bad = [k for k in self.keep if k not in CATEGORIES]
        if bad or not self.keep:
            raise ConfigError(f"{prefix}.keep: {list(self.keep)}; choose a non-empty subset of {list(CATEGORIES)}")


@dataclass(frozen=True)
class EvalConfig:
    features: str = F("auto", choices=("auto", "inception", "evalnet"),
                      help="feature space of the generative protocol: inception (eval.inception_weights), evalnet (a "
                           "classifier trained once on all training images of the source, balanced, cached; no part "
                           "in training or filtering), auto = inception when eval.inception_weights is set, else evalnet")
    inception_weights: str = F("", help="local torchvision Inception-v3 state_dict file (features=inception/auto); "
                                        "loaded strictly, never downloaded")
    num_per_class: int = F(50, ge=2, help="generative protocol (evaluate with model.checkpoint; the pipeline report): "
                                          "class-uniform samples per class")
    min_real_per_class: int = F(20, ge=2, help="per-class reference: the class's training images, topped up with its "
                                               "validation images when it has fewer than this")
    evalnet_seed: int = F(0, ge=0, help="evalnet: its training seed, independent of the run's seed, so every seed of a "
                                        "multi-seed study is measured in the same feature space (and it trains once)")
    evalnet_steps: int = F(500, ge=1, help="evalnet: training steps (architecture and optimiser from classifier.*; "
                                           "class-balanced sampling)")
    cas_steps: int = F(300, ge=0, help="CAS: steps of the classifier trained on the samples only, tested on the real "
                                       "test set (architecture from classifier.*; 0 = skip, cas_acc null)")
    knn_k: int = F(5, ge=1, help="k of precision/recall, density/coverage, AvgkNN, LOF, rarity")
    kid_subsets: int = F(100, ge=1, help="KID: number of random subsets")
    kid_subset_size: int = F(1000, ge=2, help="KID: subset size (capped at the set sizes)")
    grid_per_class: int = F(8, ge=1, help="sample grids: images per class")
    minority_scales: tuple[float, ...] = F((), help="quality gate of minority guidance (evaluate with model.checkpoint): "
                                                    "these guidance.minority.scale values (and 0, unguided) are sampled "
                                                    "with the same seeds and scored on the validation split; "
                                                    "minority_gate.json/.png report the low-density metrics against "
                                                    "precision and class consistency and the largest scale within 2 "
                                                    "points of unguided class consistency and 10% of its precision")

    def validate(self, prefix: str) -> None:
        bad = [v for v in self.minority_scales if not v >= 0]
        if bad:
            raise ConfigError(f"{prefix}.minority_scales: {bad[0]} is not a scale (guidance scales are >= 0)")
