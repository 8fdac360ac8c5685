"""Config sections of the diffusion core: model, diffusion, loss, train, sample, guidance."""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from .classify import ARCHS as CLASSIFIER_ARCHS
from .schema import ConfigError, F

LOSS_TERMS = ("mse", "cbdm", "aid", "infonce", "cond_uncond")

# UNet architecture presets: the one table of architecture defaults (``ltaug.diffusion.unet.PRESETS`` is
# this table). ``model.preset`` picks a row; every architecture key set explicitly in ``model`` wins over it.
MODEL_PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType({k: MappingProxyType(v) for k, v in {
    # the plain defaults: a DDPM-style UNet (~1.1M parameters at 16x16), 3 levels, attention at 8x8
    "custom": dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.1, num_heads=1,
                   groups=8),
    # ~0.8M parameters, ~78 MFLOP/sample at 16x16 (gray or colour); the CPU quickstart model. Widths are
    # multiples of 32 (oneDNN's blocked kernels waste lanes on 24/48) and no dropout: a 0.8M-parameter
    # net trained for ~1500 steps underfits rather than overfits, and dropout's mask cost ~20% of a step.
    "tiny": dict(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, num_heads=1,
                 groups=8),
    # ~4.4M parameters, 16x16 / 28x28 / 32x32
    "small": dict(ch=64, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.1, num_heads=1,
                  groups=16),
    # CBDM / CCUA CIFAR configuration (algorithms.md §0): ~35.7M parameters
    "cbdm": dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
                 num_heads=1, groups=32),
}.items()})
ARCH_KEYS = tuple(MODEL_PRESETS["custom"])


def _from_preset(key: str, text: str) -> str:
    vals = ", ".join(f"{p} {list(a[key]) if isinstance(a[key], tuple) else a[key]}" for p, a in MODEL_PRESETS.items())
    return f"{text}; null = from model.preset ({vals}); a value set here wins over the preset"


@dataclass(frozen=True)
class ModelConfig:
    """The diffusion UNet. Rule: ``preset`` supplies every architecture key left unset (null); a key set
    explicitly (in a file, ``--set`` or ``with_values``) wins over the preset. :meth:`architecture` resolves it."""

    checkpoint: str = F("", help="diffusion checkpoint to load (local or s3://)")
    preset: str = F("custom", choices=tuple(MODEL_PRESETS),
                    help="UNet preset: supplies every architecture key below left null; a key set explicitly wins "
                         "(tiny ~0.8M params, small ~4.4M, cbdm = CBDM CIFAR 35.7M; custom = the plain defaults)")
    ch: int | None = F(None, ge=4, help=_from_preset("ch", "base width of the UNet"))
    ch_mult: tuple[int, ...] | None = F(None, help=_from_preset("ch_mult", "channel multiplier per resolution level"))
    num_res_blocks: int | None = F(None, ge=1, help=_from_preset("num_res_blocks", "residual blocks per level"))
    attn_resolutions: tuple[int, ...] | None = F(None, help=_from_preset("attn_resolutions",
                                                                         "resolutions (pixels) with self-attention"))
    dropout: float | None = F(None, ge=0.0, lt=1.0, help=_from_preset("dropout", "dropout in residual blocks"))
    num_heads: int | None = F(None, ge=1, help=_from_preset("num_heads", "attention heads"))
    groups: int | None = F(None, ge=1, help=_from_preset("groups", "GroupNorm groups (gcd with each width is used)"))

    def architecture(self) -> dict[str, Any]:
        """Every architecture key (``ARCH_KEYS``): the preset's values, overridden by each key set here."""
        arch = dict(MODEL_PRESETS[self.preset])
        arch.update({k: getattr(self, k) for k in ARCH_KEYS if getattr(self, k) is not None})
        return arch

    def validate(self, prefix: str) -> None:
        a = self.architecture()
        if not a["ch_mult"] or any(m < 1 for m in a["ch_mult"]):
            raise ConfigError(f"{prefix}.ch_mult: {list(a['ch_mult'])} must be a non-empty list of multipliers >= 1")
        if any(r < 1 for r in a["attn_resolutions"]):
            raise ConfigError(f"{prefix}.attn_resolutions: {list(a['attn_resolutions'])} must be resolutions >= 1")
        if a["ch"] % a["num_heads"]:
            raise ConfigError(f"{prefix}.num_heads: {a['num_heads']} must divide {prefix}.ch={a['ch']} "
                              f"(with {prefix}.preset={self.preset})")


@dataclass(frozen=True)
class DiffusionConfig:
    schedule: str = F("linear", choices=("linear", "cosine"), help="beta schedule")
    timesteps: int = F(1000, ge=2, help="T, training timesteps")
    beta_start: float = F(1e-4, gt=0.0, lt=1.0, help="linear schedule: beta_1")
    beta_end: float = F(0.02, gt=0.0, lt=1.0, help="linear schedule: beta_T")


@dataclass(frozen=True)
class LossConfig:
    """Loss-term weights (``CompositeLoss``) and the terms' options. The default is plain DDPM (``mse`` only);
    a preset states its method's terms: CBDM ``cbdm: 1.0``, DiffuLT ``cbdm`` + ``aid: 0.1``, CCUA
    ``infonce: 1.0`` + ``cond_uncond: 1.0`` (configs/ccua.yaml)."""

    mse: float = F(1.0, ge=0.0, help="weight of the denoising MSE")
    cbdm: float = F(0.0, ge=0.0, help="CBDM tau (the regulariser weight is tau * t/T); 0 = off (plain DDPM); "
                                      "1.0 in CBDM's README")
    cbdm_commit: float = F(0.25, ge=0.0, help="CBDM commitment weight gamma")
    cbdm_prior: str = F("empirical", choices=("empirical", "uniform"), help="CBDM y' distribution")
    aid: float = F(0.0, ge=0.0, help="DiffuLT AID-biased loss alpha (needs classifier.checkpoint, or loss.aid_features="
                                     "own); 0.1 in the paper (see train_diffusion's aid_calibration for its real scale)")
    aid_gate: str = F("half", choices=("half", "alpha_bar", "none"),
                      help="AID OOD side (d > 2 d_f) time gating: t < T/2, weight alpha_bar_t, or none")
    aid_id_from: float = F(0.5, ge=0.0, le=1.0,
                           help="AID ID side (d < r_id) acts only for t >= aid_id_from * T, where x0_hat is a generation "
                                "rather than a reconstruction of the real x0 (0 = every t: penalises correct "
                                "reconstructions at small t; 1 = ID side off)")
    aid_radius_quantile: float = F(0.0, ge=0.0, le=1.0,
                                   help="AID ID-side radius r_id: 0 = the feature bank's d_f (classifier.radius); "
                                        "q in (0, 1] = the q-quantile of the real class distances in the loss's "
                                        "feature space")
    aid_features: str = F("filter", choices=("filter", "own"),
                          help="AID feature network: filter = classifier.checkpoint (the filter's classifier); own = "
                               "a separate classifier (loss.aid_checkpoint, or trained by train_diffusion on the real "
                               "train split with seed + 1 and loss.aid_arch), so the filter does not judge the loss's "
                               "own feature space")
    aid_checkpoint: str = F("", help="loss.aid_features=own: classifier checkpoint of the loss's feature network "
                                     "(empty = train one in train_diffusion)")
    aid_arch: str = F("resnet20", choices=CLASSIFIER_ARCHS,
                      help="loss.aid_features=own without aid_checkpoint: architecture of the trained feature network")
    aid_normalize: bool = F(False, help="divide the AID term by sg(running mean AID / running mean eps-MSE), so alpha "
                                        "is the AID term's share of the MSE's magnitude (see AIDLoss)")
    infonce: float = F(0.0, ge=0.0, help="CCUA InfoNCE weight alpha (x t/T); 1.0 in CCUA's U-Net script")
    infonce_temperature: float = F(0.1, gt=0.0, help="InfoNCE temperature tau (CCUA: 0.1)")
    infonce_mode: str = F("batch", choices=("batch", "queue", "supervised"),
                          help="InfoNCE negatives: batch = the other samples of the global batch (CCUA's UCL), "
                               "queue = a FIFO queue of past keys (detached), supervised = same-label positive, "
                               "other-label negatives")
    infonce_queue: int = F(1024, ge=1, help="negative queue size K (infonce_mode=queue; CCUA clr.py: 1024 for "
                                            "CIFAR10-LT); must be >= train.batch_size")
    brs: bool = F(False, help="CCUA batch re-sampling: draw batches from a softer exponential class profile "
                              "rho_b^(rank/(C-1)) (more tail samples and negatives per batch); CCUA uses it on "
                              "ImageNet-LT / TinyImageNet-LT, not CIFAR-LT")
    brs_factor: float = F(0.1, gt=0.0, le=1.0, help="rho_b, the re-sampled profile's n_min/n_max (CCUA: 0.1)")
    cond_uncond: float = F(0.0, ge=0.0, help="CCUA conditional-unconditional alignment weight gamma (x t/T); "
                                             "1.0 in CCUA's U-Net script")
    label_drop: float = F(0.1, ge=0.0, le=1.0, help="classifier-free label drop probability (whole batch)")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = F(2000, ge=0, help="optimisation steps of this job's training")
    batch_size: int = F(64, ge=1, help="per-step batch (global, split across workers)")
    lr: float = F(2e-4, gt=0.0, help="learning rate")
    optimizer: str = F("adam", choices=("adam", "adamw", "sgd"), help="optimizer")
    momentum: float = F(0.9, ge=0.0, lt=1.0, help="SGD momentum (optimizer=sgd only)")
    weight_decay: float = F(0.0, ge=0.0, help="weight decay")
    warmup: int = F(100, ge=0, help="linear warm-up steps")
    milestones: tuple[float, ...] = F((), help="lr x train.lr_gamma at these fractions of train.steps (empty = constant lr)")
    lr_gamma: float = F(0.1, gt=0.0, le=1.0, help="lr multiplier at each of train.milestones")
    grad_clip: float = F(1.0, ge=0.0, help="gradient-norm clip (0 = off)")
    ema_decay: float = F(0.999, ge=0.0, lt=1.0, help="EMA decay (0 = off)")
    amp: bool = F(True, help="mixed precision where the device supports it (CUDA bf16/fp16)")
    grad_accum: int = F(1, ge=1, help="micro-batches per optimizer step (effective batch = batch_size x grad_accum x workers; DDP syncs gradients on the last one only); 1 = off")
    log_every: int = F(50, ge=1, help="log metrics every n steps")
    ckpt_every: int = F(500, ge=0, help="checkpoint every n steps (0 = only at the end)")
    sample_every: int = F(0, ge=0, help="sample grid every n steps (0 = only at the end)")
    keep_checkpoints: int = F(2, ge=1, help="checkpoints kept (older ones deleted)")

    def validate(self, prefix: str) -> None:
        bad = [m for m in self.milestones if not 0.0 <= m <= 1.0]
        if bad:
            raise ConfigError(f"{prefix}.milestones: {list(self.milestones)} must be fractions in [0, 1]")


@dataclass(frozen=True)
class SampleConfig:
    sampler: str = F("ddim", choices=("ddpm", "ddim"), help="sampler")
    steps: int = F(50, ge=1, help="sampling steps (respaced)")
    eta: float = F(0.0, ge=0.0, le=1.0, help="DDIM eta (0 = deterministic)")
    variance: str = F("fixedlarge", choices=("fixedlarge", "fixedsmall"), help="DDPM variance")
    clip_denoised: bool = F(False, help="clip x0_hat to [-1, 1] inside every step (CBDM clips only the returned image; "
                                        "clipping stabilises small or briefly trained models)")
    bns_gamma: float = F(1.0, gt=0.0, help="Boost-and-Skip (Um, Kim & Ye, ICML 2025) guidance-free minority sampler: "
                                           "initial noise x_T = gamma z (the reference uses 2.5-4.0); 1 = off")
    bns_skip: int = F(0, ge=0, help="Boost-and-Skip: skip the first Delta respaced steps, starting from the boosted "
                                    "noise at step Delta (the reference: 3 of 250); 0 = off; must be < sample.steps")
    batch_size: int = F(64, ge=1, help="images per sampler call")
    num_per_class: int = F(8, ge=1, help="images per class (jobs/sample.py)")
    classes: tuple[int, ...] = F((), help="classes to sample (empty = all)")
    seed: int = F(0, help="base seed; image k of a run uses a generator seeded from (seed, k)")
    use_ema: bool = F(True, help="sample with the EMA weights")
    compile: str = F("off", choices=("off", "default", "reduce-overhead", "max-autotune"),
                     help="torch.compile the UNet for sampling (inductor; weights frozen as constants in grad-free "
                          "steps): 'default' fuses GroupNorm/SiLU/adds and prepacks conv weights (CPU: 1.1-1.2x "
                          "faster after a 20-60 s compile per process), 'reduce-overhead' adds CUDA graphs on GPU; "
                          "images agree with eager to float rounding, so a run's shards must all use one setting")

    def validate(self, prefix: str) -> None:
        if self.bns_skip >= self.steps:
            raise ConfigError(f"{prefix}.bns_skip: {self.bns_skip} must be below {prefix}.steps={self.steps}")


@dataclass(frozen=True)
class CFGConfig:
    omega: float = F(0.0, ge=0.0, help="classifier-free guidance scale (CBDM convention; 0 = off)")
    start: float = F(0.0, ge=0.0, le=1.0, help="active from this fraction of the trajectory (0 = first step)")
    stop: float = F(1.0, ge=0.0, le=1.0, help="inactive from this fraction of the trajectory on (1 = to the end)")
    every: int = F(1, ge=1, help="apply every n sampling steps (1 = every step)")

    def validate(self, prefix: str) -> None:
        _check_window(self, prefix)


@dataclass(frozen=True)
class MinorityConfig:
    scale: float = F(0.0, ge=0.0, help="minority self-guidance scale w (0 = off)")
    every: int = F(5, ge=1, help="apply every n sampling steps")
    start: float = F(0.0, ge=0.0, le=1.0, help="active from this fraction of the trajectory (0 = first step)")
    stop: float = F(1.0, ge=0.0, le=1.0, help="inactive after this fraction of the trajectory")
    perturb: float = F(0.8, gt=0.0, lt=1.0, help="re-noising level s as a fraction of T")
    space: str = F("auto", choices=("auto", "eps", "mean"),
                   help="where the guidance acts: mean = mean += w Sigma_t g (the reference, DDPM), eps = eps -= "
                        "sqrt(1-ab_t) w g (classifier guidance in eps space; equals mean to first order under DDPM), "
                        "auto = eps under DDIM, mean under DDPM")
    target: str = F("cond", choices=("cond", "guided"),
                    help="x0_hat the discrepancy is computed on: cond = the conditional model's (CFG applies to the "
                         "step only), guided = after the step's other eps guidances (the CFG-extrapolated one)")
    distance: str = F("auto", choices=("auto", "l2", "classifier", "lpips"),
                      help="discrepancy: L2, classifier features, LPIPS; auto = classifier when classifier.checkpoint "
                           "is given to generation, else l2")
    lpips_weights: str = F("", help="local LPIPS weights file (distance=lpips)")

    def validate(self, prefix: str) -> None:
        _check_window(self, prefix)


def _check_window(section, prefix: str) -> None:
    """``start <= stop`` of a guidance window (``guidance.<name>.start/stop/every``)."""
    if section.start > section.stop:
        raise ConfigError(f"{prefix}.start: {section.start} is after {prefix}.stop={section.stop}")


@dataclass(frozen=True)
class GuidanceConfig:
    cfg: CFGConfig = F(default_factory=CFGConfig)
    minority: MinorityConfig = F(default_factory=MinorityConfig)
