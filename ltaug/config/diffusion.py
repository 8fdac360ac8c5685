"""Config sections of the diffusion core: model, diffusion, loss, train, sample, guidance."""
from __future__ import annotations

from dataclasses import dataclass

from .schema import F

LOSS_TERMS = ("mse", "cbdm", "aid", "infonce", "cond_uncond")


@dataclass(frozen=True)
class ModelConfig:
    checkpoint: str = F("", help="diffusion checkpoint to load (local or s3://)")
    preset: str = F("custom", choices=("custom", "tiny", "small", "cbdm"),
                    help="UNet preset (tiny ~0.8M params, small ~4.4M, cbdm = CBDM CIFAR 35.7M); custom = the fields below")
    ch: int = F(32, ge=4, help="base width of the UNet")
    ch_mult: tuple[int, ...] = F((1, 2, 2), help="channel multiplier per resolution level")
    num_res_blocks: int = F(1, ge=1, help="residual blocks per level")
    attn_resolutions: tuple[int, ...] = F((8,), help="resolutions (pixels) with self-attention")
    dropout: float = F(0.1, ge=0.0, lt=1.0, help="dropout in residual blocks")
    num_heads: int = F(1, ge=1, help="attention heads")
    groups: int = F(8, ge=1, help="GroupNorm groups (gcd with each width is used)")


@dataclass(frozen=True)
class DiffusionConfig:
    schedule: str = F("linear", choices=("linear", "cosine"), help="beta schedule")
    timesteps: int = F(1000, ge=2, help="T, training timesteps")
    beta_start: float = F(1e-4, gt=0.0, lt=1.0, help="linear schedule: beta_1")
    beta_end: float = F(0.02, gt=0.0, lt=1.0, help="linear schedule: beta_T")


@dataclass(frozen=True)
class LossConfig:
    mse: float = F(1.0, ge=0.0, help="weight of the denoising MSE")
    cbdm: float = F(1.0, ge=0.0, help="CBDM tau (the regulariser weight is tau * t/T); 0 = off")
    cbdm_commit: float = F(0.25, ge=0.0, help="CBDM commitment weight gamma")
    cbdm_prior: str = F("empirical", choices=("empirical", "uniform"), help="CBDM y' distribution")
    aid: float = F(0.0, ge=0.0, help="DiffuLT AID-biased loss alpha (needs classifier.checkpoint); 0.1 in the paper")
    aid_gate: str = F("half", choices=("half", "alpha_bar", "none"),
                      help="AID time gating: t < T/2, weight alpha_bar_t, or none")
    infonce: float = F(0.0, ge=0.0, help="CCUA unsupervised InfoNCE weight (x t/T)")
    infonce_temperature: float = F(0.1, gt=0.0, help="InfoNCE temperature")
    cond_uncond: float = F(0.0, ge=0.0, help="CCUA conditional-unconditional alignment weight (x t/T)")
    label_drop: float = F(0.1, ge=0.0, le=1.0, help="classifier-free label drop probability (whole batch)")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = F(2000, ge=0, help="optimisation steps of this job's training")
    batch_size: int = F(64, ge=1, help="per-step batch (global, split across workers)")
    lr: float = F(2e-4, gt=0.0, help="learning rate")
    optimizer: str = F("adam", choices=("adam", "adamw"), help="optimizer")
    weight_decay: float = F(0.0, ge=0.0, help="weight decay")
    warmup: int = F(100, ge=0, help="linear warm-up steps")
    grad_clip: float = F(1.0, ge=0.0, help="gradient-norm clip (0 = off)")
    ema_decay: float = F(0.999, ge=0.0, lt=1.0, help="EMA decay (0 = off)")
    amp: bool = F(True, help="mixed precision where the device supports it (CUDA bf16/fp16)")
    log_every: int = F(50, ge=1, help="log metrics every n steps")
    ckpt_every: int = F(500, ge=0, help="checkpoint every n steps (0 = only at the end)")
    sample_every: int = F(0, ge=0, help="sample grid every n steps (0 = only at the end)")
    keep_checkpoints: int = F(2, ge=1, help="checkpoints kept (older ones deleted)")


@dataclass(frozen=True)
class SampleConfig:
    sampler: str = F("ddim", choices=("ddpm", "ddim"), help="sampler")
    steps: int = F(50, ge=1, help="sampling steps (respaced)")
    eta: float = F(0.0, ge=0.0, le=1.0, help="DDIM eta (0 = deterministic)")
    variance: str = F("fixedlarge", choices=("fixedlarge", "fixedsmall"), help="DDPM variance")
    clip_denoised: bool = F(False, help="clip x0_hat to [-1, 1] inside every step (CBDM clips only the returned image; "
                                        "clipping stabilises small or briefly trained models)")
    batch_size: int = F(64, ge=1, help="images per sampler call")
    num_per_class: int = F(8, ge=1, help="images per class (jobs/sample.py)")
    classes: tuple[int, ...] = F((), help="classes to sample (empty = all)")
    seed: int = F(0, help="base seed; image k of a run uses a generator seeded from (seed, k)")
    use_ema: bool = F(True, help="sample with the EMA weights")


@dataclass(frozen=True)
class CFGConfig:
    omega: float = F(0.0, ge=0.0, help="classifier-free guidance scale (CBDM convention; 0 = off)")


@dataclass(frozen=True)
class MinorityConfig:
    scale: float = F(0.0, ge=0.0, help="minority self-guidance scale w (0 = off)")
    every: int = F(5, ge=1, help="apply every n sampling steps")
    start: float = F(0.0, ge=0.0, le=1.0, help="active from this fraction of the trajectory (0 = first step)")
    stop: float = F(1.0, ge=0.0, le=1.0, help="inactive after this fraction of the trajectory")
    perturb: float = F(0.8, gt=0.0, lt=1.0, help="re-noising level s as a fraction of T")
    distance: str = F("l2", choices=("l2", "classifier", "lpips"), help="discrepancy: L2, classifier features, LPIPS")
    lpips_weights: str = F("", help="local LPIPS weights file (distance=lpips)")


@dataclass(frozen=True)
class GuidanceConfig:
    cfg: CFGConfig = F(default_factory=CFGConfig)
    minority: MinorityConfig = F(default_factory=MinorityConfig)
