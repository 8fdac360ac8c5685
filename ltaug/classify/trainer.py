"""Classifier training on real (+ weighted synthetic) data through the one training loop, and loading.

``train_classifier`` is a pure function of (config, data, world): it runs locally with ``LocalWorld``
and under Ray Train with a Ray World. The final checkpoint holds the model, its ``ModelSpec`` and the
feature bank (class centres and radii of the real training images), so ``load_classifier`` needs no
training data. DiffuLT's weighted retraining (Shao et al., NeurIPS 2024): real samples weight 1,
synthetic samples weight omega (``classifier.synthetic_weight``) in the loss. Under more than one
worker on an accelerator the BatchNorm layers become ``SyncBatchNorm`` (statistics over the global
batch, as one process would see it); the saved weights are plain BatchNorm ones either way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..config import ClassifierConfig
from ..config.schema import to_dict
from ..train import LoopSpec, StepBatches, World, fit
from ..train import checkpoint as ckpt_io
from .bank import FeatureBank, build_bank, extract_features
from .losses import METHODS, make_method
from .resnet import Classifier, ModelSpec, build_classifier

CKPT_KIND = "classifier"


@dataclass
class ClassifierResult:
    model: Classifier            # the weights evaluated (EMA when kept), eval mode
    bank: FeatureBank
    spec: ModelSpec
    checkpoint: str | None
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    num_real: int = 0
    num_synthetic: int = 0
    sync_batchnorm: bool = False  # BatchNorm statistics synchronised across workers


# ------------------------------------------------------------------------------------------- data


def select_synthetic(synthetic, real_counts, max_per_class: int = 0, fill_to: int = 0,
                     generator: torch.Generator | None = None):
    """Per-class quotas: at most ``max_per_class`` (0 = no cap) and at most ``fill_to - n_c`` (0 = no cap).

    ``synthetic`` is an ``ImageSet``; the kept subset is drawn at random (seeded by ``generator``).
    """
    real = np.asarray(getattr(real_counts, "counts", real_counts), dtype=np.int64)
    keep: list[np.ndarray] = []
    labels = np.asarray(synthetic.labels)
    for c in range(synthetic.num_classes):
        idx = np.where(labels == c)[0]
        quota = len(idx)
        if max_per_class:
            quota = min(quota, max_per_class)
        if fill_to:
            quota = min(quota, max(0, fill_to - int(real[c]) if c < len(real) else fill_to))
        if quota < len(idx):
            perm = torch.randperm(len(idx), generator=generator).numpy()
            idx = np.sort(idx[perm[:quota]])
        keep.append(idx)
    return synthetic.subset(np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64))


def load_synthetic(uri: str, image_size: int, channels: int, num_classes: int | None = None, on_bad: str = "error"):
    """Synthetic ``ImageSet`` from WebDataset shards (local dir or ``s3://`` prefix), via the data layer."""
    from ..data.shards import read_shards  # the data layer's shard reader (no second reader here)

    return read_shards(uri, image_size=image_size, channels=channels, on_bad=on_bad, num_classes=num_classes)


def augment(x: Tensor, generator: torch.Generator, crop: bool, flip: bool) -> Tensor:  # [B,C,H,W] in [-1,1]
    """Random crop with ``pad = max(1, H // 8)`` black padding (4 px at 32x32) and optional h-flip."""
    B, C, H, W = x.shape
    dev = generator.device
    if crop:
        p = max(1, H // 8)
        xp = torch.nn.functional.pad(x, (p, p, p, p), value=-1.0)
        oy = torch.randint(0, 2 * p + 1, (B,), generator=generator, device=dev).to(x.device)
        ox = torch.randint(0, 2 * p + 1, (B,), generator=generator, device=dev).to(x.device)
        rows = (oy[:, None] + torch.arange(H, device=x.device))[:, None, :, None].expand(B, C, H, W + 2 * p)
        xp = xp.gather(2, rows)
        cols = (ox[:, None] + torch.arange(W, device=x.device))[:, None, None, :].expand(B, C, H, W)
        x = xp.gather(3, cols)
    if flip:
        m = (torch.rand(B, generator=generator, device=dev) < 0.5).to(x.device)
        x = torch.where(m[:, None, None, None], x.flip(3), x)
    return x


def _augment_flags(mode: str, channels: int) -> tuple[bool, bool]:
    if mode == "auto":
        mode = "crop_flip" if channels == 3 else "crop"   # flipping digits / letters changes them
    return mode in ("crop", "crop_flip"), mode == "crop_flip"


# ------------------------------------------------------------------------------------------- train


SYNC_BN_DEVICES = ("cuda", "xpu", "hpu")   # device types PyTorch's SyncBatchNorm runs on (it raises on CPU)


def with_sync_batchnorm(model: nn.Module, world: World) -> tuple[nn.Module, bool]:
    """``(model, converted)``: BatchNorm -> ``SyncBatchNorm`` when ``world.world_size > 1`` on an accelerator.

    Multi-worker CPU training (gloo) keeps per-worker statistics, because PyTorch's SyncBatchNorm
    refuses CPU tensors. The state_dict keys are the same, so checkpoints load into the plain model.
    """
    if world.world_size <= 1 or torch.device(world.device).type not in SYNC_BN_DEVICES:
        return model, False
    return nn.SyncBatchNorm.convert_sync_batchnorm(model), True


def _classifier_cfg(cfg: Any) -> tuple[ClassifierConfig, int, dict[str, Any]]:
    if isinstance(cfg, ClassifierConfig):
        return cfg, 0, {"classifier": to_dict(cfg)}
    from ..config import public_dict

    return cfg.classifier, int(cfg.seed), public_dict(cfg)


def loop_spec(c: ClassifierConfig, n_train: int, seed: int = 0) -> LoopSpec:
    """The classifier's :class:`LoopSpec`, every field from ``c``: epochs -> steps, fractional warm-up and
    milestones -> steps. ``seed`` is the root ``seed`` (0 when only a ``ClassifierConfig`` is given)."""
    steps = math.ceil(c.epochs * n_train / c.batch_size) if c.epochs > 0 else c.steps
    return LoopSpec(steps=steps, lr=c.lr, optimizer=c.optimizer, momentum=c.momentum, weight_decay=c.weight_decay,
                    warmup=int(round(c.warmup * steps)), milestones=tuple(int(round(m * steps)) for m in c.milestones),
                    gamma=c.lr_gamma, grad_clip=c.grad_clip, ema_decay=c.ema_decay, amp=c.amp,
                    log_every=c.log_every, ckpt_every=c.ckpt_every, keep_checkpoints=c.keep_checkpoints, seed=seed,
                    desc=f"classifier[{c.arch}/{c.method}]")


def train_classifier(cfg: Any, data: Any, world: World, ckpt_dir: str | None = None, synthetic: Any = None, *,
                     every: list[tuple[int, Callable]] | None = None, progress: bool = True,
                     resume: bool = True) -> ClassifierResult:
    """Train ``cfg.classifier`` (a root ``Config`` or a ``ClassifierConfig``) on ``data`` (``LTDataset``
    or the train ``ImageSet``) plus optional ``synthetic`` (``ImageSet``, already filtered / quota'd
    or not: quotas from the config are applied here).

    Returns the trained model (eval mode, on ``world.device``), its feature bank and the final
    checkpoint URI (``ckpt_dir/ckpt-<step>.pt``, feature bank inside; None without ``ckpt_dir``).
    Metrics go through ``world.report`` (the loop logs every ``classifier.log_every`` steps).
    """
    c, seed, config_dict = _classifier_cfg(cfg)
    real = getattr(data, "train", data)
    K = real.num_classes
    device = world.device
    x_real, y_real = real.tensors()
    xs, ys, ws = [x_real], [y_real], [torch.ones(len(y_real))]
    n_syn = 0
    if synthetic is not None and len(synthetic):
        if int(synthetic.labels.max()) >= K or synthetic.images.shape[1:] != real.images.shape[1:]:
            raise ValueError(f"synthetic data (labels up to {int(synthetic.labels.max())}, images {synthetic.images.shape[1:]}) "
                             f"does not match the real data ({K} classes, images {real.images.shape[1:]})")
        synthetic = select_synthetic(synthetic, real.counts, c.synthetic_max_per_class, c.synthetic_fill_to,
                                     torch.Generator().manual_seed(seed))
        x_syn, y_syn = synthetic.tensors()
        xs.append(x_syn), ys.append(y_syn), ws.append(torch.full((len(y_syn),), c.synthetic_weight))
        n_syn = len(y_syn)
    x_all, y_all, w_all = torch.cat(xs).to(device), torch.cat(ys).to(device), torch.cat(ws).to(device)
    weighted = n_syn > 0

    spec_m = ModelSpec(c.arch, K, real.channels, real.image_size, c.width,
                       normed_linear=METHODS[c.method].normed_linear)   # LDAM: cosine last layer
    with torch.random.fork_rng(devices=[]):   # initialisation is a function of the seed, not global state
        torch.manual_seed(seed)
        model = build_classifier(spec_m)
    model.norm.set_stats(x_real)
    model, synced = with_sync_batchnorm(model, world)
    spec = loop_spec(c, len(y_all), seed)
    # effective class counts: synthetic samples count omega each (they carry omega of the loss)
    eff = np.bincount(y_real.numpy(), minlength=K).astype(np.float64)
    if weighted:
        eff += c.synthetic_weight * np.bincount(ys[1].numpy(), minlength=K)
    method = make_method(c.method, eff, spec.steps, tau=c.la_tau, drw_start=c.drw_start, drw_beta=c.drw_beta,
                         ldam_max_margin=c.ldam_max_margin, ldam_scale=c.ldam_scale)
    draw_w = method.sample_weights(y_all.cpu().numpy())
    batches = StepBatches(len(y_all), c.batch_size, seed, world.rank, world.world_size, weights=draw_w)
    crop, flip = _augment_flags(c.augment, real.channels)

    def objective(net: nn.Module, step: int, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        idx = batches.indices(step).to(device)
        xb = augment(x_all[idx], g, crop, flip)
        yb = y_all[idx]
        logits = net(xb)
        loss = method.mean_loss(logits, yb, step, w_all[idx] if weighted else None)
        return loss, {"train_acc": float((logits.argmax(1) == yb).float().mean())}

    extra = {"model_spec": spec_m.to_dict(), "method": c.method, "use_ema": c.ema_decay > 0,
             "class_names": list(real.class_names), "num_real": len(y_real), "num_synthetic": n_syn,
             "sync_batchnorm": synced}
    res = fit(model, objective, spec, world, ckpt_dir=ckpt_dir, config=config_dict, kind=CKPT_KIND,
              extra=extra, resume=resume, every=every, progress=progress)
    net = res.ema if res.ema is not None else res.model
    net.eval()
    bank = build_bank(extract_features(net, x_real.to(device), c.eval_batch_size), y_real.to(device), K,
                      c.radius, c.radius_quantile)
    if res.checkpoint and world.is_main:
        ck = ckpt_io.load(res.checkpoint)
        ck["extra"] = {**ck.get("extra", {}), **extra, "feature_bank": bank.state_dict()}
        ckpt_io.save(res.checkpoint, ck)
    return ClassifierResult(model=net, bank=bank, spec=spec_m, checkpoint=res.checkpoint, steps=res.step,
                            history=res.history, num_real=len(y_real), num_synthetic=n_syn, sync_batchnorm=synced)


# ------------------------------------------------------------------------------------------- load


def load_classifier(uri: str, map_location: str | torch.device = "cpu") -> tuple[Classifier, FeatureBank | None]:
    """``(model, bank)`` from a classifier checkpoint file, or the newest valid one in a directory.

    The model is in eval mode and takes images in [-1, 1] (it normalises internally); EMA weights are
    used when the checkpoint kept them. ``bank`` is None only for an intermediate checkpoint written
    before training finished.
    """
    ck = ckpt_io.open_checkpoint(uri, map_location)
    extra = ck.get("extra") or {}
    if ck.get("kind") != CKPT_KIND or "model_spec" not in extra:
        raise ckpt_io.CheckpointError(f"{uri}: not a classifier checkpoint (kind {ck.get('kind')!r})")
    model = build_classifier(ModelSpec(**extra["model_spec"]))
    weights = ck["ema"] if extra.get("use_ema") and ck.get("ema") is not None else ck["model"]
    model.load_state_dict(weights)
    model.to(map_location).eval()
    bank = FeatureBank.from_state_dict(extra["feature_bank"]).to(map_location) if "feature_bank" in extra else None
    return model, bank
