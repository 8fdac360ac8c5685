"""Diffusion training on top of the one training loop (``ltaug.train.fit``), and checkpoint loading.

Pure: no ray, no mlflow. ``train_diffusion`` takes a World (``LocalWorld`` here, the Ray Train World
later), and reports sample grids through a callback. Recipe defaults follow CBDM / pytorch-ddpm
(algorithms.md §0): Adam 2e-4, warm-up, grad-clip 1, EMA, whole-batch label drop 0.1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..data.types import to_model_range
from ..train import LoopSpec, StepBatches, TrainResult, fit
from ..train import checkpoint as ckpt_io
from .guidance import guidances_from_config
from .losses import CompositeLoss, FeatureSpace, LossContext
from .resample import BatchResampler, ResampledBatches
from .sample import sample, sample_seeds
from .schedule import NoiseSchedule
from .unet import UNet, UNetSpec, spec_from_config

KIND = "diffusion"
GRID_PER_CLASS = 4


def host_generator(g: torch.Generator) -> torch.Generator:
    """The generator the objective's host-side scalars (the label-drop coin, the dropout seed) come from: ``g``
    itself on CPU (the stream unchanged), else a CPU generator seeded from ``g``'s seed (read on the host), so a
    CUDA step draws them without a device-to-host sync and stays a pure function of (seed, step, rank)."""
    if g.device.type == "cpu":
        return g
    return torch.Generator().manual_seed((g.initial_seed() * 2_862_933_555_777_941_757 + 3_037_000_493) % (2**63 - 1))


class DiffusionObjective:
    """``objective(model, step, generator) -> (loss, logs)`` for ``fit``.

    ``x0``: float ``[N,C,H,W]`` in [-1, 1], or the uint8 ``[N,H,W,C]`` image array itself (e.g. the dataset
    artifact's memory map), whose rows are gathered and converted per step (no full copy per worker).
    Step s uses the batch ``batches.indices(s)``; t, noise, the label-drop coin and the prior labels all
    come from the step's generator, so a step is a pure function of (weights, s).
    """

    def __init__(self, schedule: NoiseSchedule, loss: CompositeLoss, x0: Tensor | np.ndarray, y: Tensor,
                 batches: StepBatches | ResampledBatches, num_classes: int, *, label_drop: float = 0.1,
                 prior: np.ndarray | Tensor | None = None,
                 gather: Callable[[Tensor], Tensor] | None = None) -> None:
        self.schedule, self.loss = schedule, loss
        self.gather = gather  # World.all_gather: the global batch for InfoNCE negatives (identity when None)
        self.x0, self.y, self.batches = x0, y, batches
        self.num_classes, self.label_drop = num_classes, label_drop
        p = torch.as_tensor(prior if prior is not None else np.full(num_classes, 1.0 / num_classes), dtype=torch.float64)
        self.prior = p / p.sum()
        self.last_ctx: LossContext | None = None

    def draw(self, step: int, g: torch.Generator, device: torch.device) -> dict[str, Any]:
        idx = self.batches.indices(step)
        if isinstance(self.x0, np.ndarray):   # uint8 [N,H,W,C] (a memory map): only this batch's rows are read
            x0 = to_model_range(np.asarray(self.x0[idx.numpy()])).to(device)
        else:
            x0 = self.x0[idx].to(device)
        y = self.y[idx].to(device)
        B = x0.shape[0]
        t = torch.randint(0, self.schedule.T, (B,), generator=g, device=g.device).to(device)
        noise = torch.randn(x0.shape, generator=g, device=g.device, dtype=x0.dtype).to(device)
        hg = host_generator(g)
        dropped = bool(torch.rand((), generator=hg) < self.label_drop)     # a host draw: no device sync
        prior_y = torch.multinomial(self.prior.to(g.device), B, replacement=True, generator=g).to(device)
        return dict(x0=x0, y=y, t=t, noise=noise, dropped=dropped, prior_y=prior_y, host_g=hg)

    def __call__(self, model: nn.Module, step: int, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        device = next(model.parameters()).device
        d = self.draw(step, g, device)
        ctx = LossContext(model, self.schedule, d["x0"], d["y"], d["t"], d["noise"], num_classes=self.num_classes,
                          dropped=d["dropped"], prior_y=d["prior_y"], passes=self.loss.passes,
                          features=self.loss.needs_features, gather=self.gather, generator=g)
        self.last_ctx = ctx
        # Dropout draws from the global RNG: fork it and seed it from the step's generator, so a step is
        # a pure function of (weights, step) and resuming needs no global RNG bookkeeping.
        seed = int(torch.randint(0, 2**62, (1,), generator=d["host_g"]))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            loss, logs = self.loss(ctx, step)
        return loss, {**logs, "label_dropped": float(d["dropped"]), "forwards": float(ctx.forwards)}


def loop_spec(cfg) -> LoopSpec:
    """The diffusion :class:`LoopSpec`, every field from ``cfg.train`` (+ ``cfg.seed``); milestones are
    fractions of ``train.steps``."""
    t = cfg.train
    return LoopSpec(steps=t.steps, lr=t.lr, optimizer=t.optimizer, momentum=t.momentum, weight_decay=t.weight_decay,
                    warmup=t.warmup, milestones=tuple(int(round(m * t.steps)) for m in t.milestones),
                    gamma=t.lr_gamma, grad_clip=t.grad_clip, ema_decay=t.ema_decay, amp=t.amp, grad_accum=t.grad_accum,
                    log_every=t.log_every, ckpt_every=t.ckpt_every, keep_checkpoints=t.keep_checkpoints,
                    seed=cfg.seed, desc="diffusion")


def build_model(cfg, channels: int, image_size: int, num_classes: int) -> UNet:
    return UNet(spec_from_config(cfg.model, channels, image_size, num_classes))


def grid_sampler(cfg, schedule: NoiseSchedule, num_classes: int, per_class: int = GRID_PER_CLASS,
                 extractor: Callable[[Tensor], Tensor] | None = None) -> Callable[[nn.Module], Tensor]:
    """``fn(model) -> images [per_class*C, C,H,W]`` (class-major), fixed seeds: grids are comparable over time."""
    guidances = guidances_from_config(cfg.guidance, extractor=extractor)
    scfg, bs = cfg.sample, cfg.sample.batch_size
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    seeds = sample_seeds(scfg.seed, len(labels))

    def fn(model: nn.Module) -> Tensor:
        out = [sample(model, schedule, labels[a:a + bs], seeds[a:a + bs], scfg, guidances=guidances)
               for a in range(0, len(labels), bs)]
        return torch.cat(out)
    return fn


def train_diffusion(cfg, data, world, ckpt_dir: str | None, *, feature_space: FeatureSpace | None = None,
                    on_grid: Callable[[int, Tensor], None] | None = None, progress: bool = True,
                    resume: bool = True) -> TrainResult:
    """Train the class-conditional diffusion model of ``cfg`` on ``data.train`` (an ``LTDataset``).

    ``feature_space``: the frozen classifier space for ``loss.aid > 0``. ``on_grid(step, images)`` gets a
    class-major sample grid (EMA weights) every ``train.sample_every`` steps and at the end.
    Returns ``fit``'s :class:`TrainResult` (``.checkpoint`` is the final checkpoint URI).
    """
    from ..config import public_dict

    train = data.train
    x0, y = train.images, torch.from_numpy(np.array(train.labels, dtype=np.int64))   # images stay memory-mapped
    C = train.num_classes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, train.channels, train.image_size, C)
    schedule = NoiseSchedule.from_config(cfg.diffusion)
    loss = CompositeLoss.from_config(cfg.loss, feature_space)
    counts = train.counts
    prior = counts.frequencies() if cfg.loss.cbdm_prior == "empirical" else None
    batches: StepBatches | ResampledBatches = StepBatches(len(train), cfg.train.batch_size, seed=cfg.seed,
                                                          rank=world.rank, world_size=world.world_size)
    if cfg.loss.brs:   # CCUA batch re-sampling of the global batch, before the split across ranks
        batches = ResampledBatches(batches, BatchResampler(y, cfg.loss.brs_factor, seed=cfg.seed))
    objective = DiffusionObjective(schedule, loss, x0, y, batches, C, label_drop=cfg.loss.label_drop, prior=prior,
                                   gather=_world_gather(world))
    extra = {"num_classes": C, "channels": train.channels, "image_size": train.image_size,
             "counts": list(counts.counts), "class_names": list(train.class_names), "spec": _spec_dict(model.spec)}
    every = []
    if on_grid is not None:
        draw = grid_sampler(cfg, schedule, C, extractor=feature_space.extractor if feature_space else None)
        every.append((cfg.train.sample_every, lambda st: on_grid(st.step, draw(st.eval_model))))
    return fit(model, objective, loop_spec(cfg), world, ckpt_dir=ckpt_dir, config=public_dict(cfg), kind=KIND,
               extra=extra, every=every, progress=progress, resume=resume)


def _world_gather(world) -> Callable[[Tensor], Tensor] | None:
    """``world.all_gather``; a World without it (an adapter) gathers nothing on one rank and fails loudly on more."""
    fn = getattr(world, "all_gather", None)
    if fn is not None or world.world_size == 1:
        return fn

    def missing(v: Tensor) -> Tensor:
        raise TypeError(f"{type(world).__name__} has no all_gather: the InfoNCE negatives of "
                        f"{world.world_size} workers cannot be gathered")
    return missing


def _spec_dict(spec: UNetSpec) -> dict[str, Any]:
    d = dict(spec.__dict__)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


@dataclass
class LoadedDiffusion:
    model: UNet
    schedule: NoiseSchedule
    config: dict[str, Any]
    extra: dict[str, Any]
    step: int

    @property
    def num_classes(self) -> int:
        return self.model.spec.num_classes


def load_diffusion(uri: str, device: str | torch.device = "cpu", use_ema: bool = True) -> LoadedDiffusion:
    """Model (EMA weights when present and ``use_ema``) + schedule from a ``train_diffusion`` checkpoint file,
    or from the newest valid checkpoint in a directory (a corrupt newest one is skipped with a warning)."""
    ck = ckpt_io.open_checkpoint(uri, map_location="cpu")
    if ck.get("kind") != KIND:
        raise ckpt_io.CheckpointError(f"{uri}: a {ck.get('kind')!r} checkpoint, not a diffusion one")
    sd = dict(ck["extra"]["spec"])
    spec = UNetSpec.from_record(sd, uri)
    model = UNet(spec)
    weights = ck["ema"] if (use_ema and ck.get("ema") is not None) else ck["model"]
    model.load_state_dict(weights)
    model.to(device).eval()
    dcfg = ck["config"].get("diffusion", {})
    from ..config import DiffusionConfig
    from ..config.schema import build
    schedule = NoiseSchedule.from_config(build(DiffusionConfig, dcfg, "diffusion"))
    return LoadedDiffusion(model, schedule, ck["config"], ck["extra"], int(ck["step"]))
