"""Stage: sample images of given classes, seeds and guidance from a diffusion checkpoint into ``samples.npz``
(images uint8 NxHxWxC, labels, seeds) and a grid PNG (one row per class). Image k depends only on its label
and seed."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import Config
from ..data import to_uint8
from ..diffusion import for_sampling, guidances_from_config, load_diffusion, sample, sample_seeds
from ..diffusion.guidance import wants_classifier
from ..diffusion.io import classifier_feature_space, save_grid_png
from ..train import resolve_checkpoint, resolve_device
from .launcher import Launcher
from .run import Run


def sample_images(cfg: Config, run: Run, launcher: Launcher | None = None) -> dict[str, Any]:
    """summary: samples (npz URI), grid, checkpoint, num_images, classes, sampler, steps, omega, minority_scale."""
    if not cfg.model.checkpoint:
        raise ValueError("model.checkpoint is required (a diffusion checkpoint file or checkpoints directory)")
    device = resolve_device(cfg.resources)
    uri = resolve_checkpoint(cfg.model.checkpoint)
    loaded = load_diffusion(uri, device, use_ema=cfg.sample.use_ema)
    model = for_sampling(loaded.model, cfg.sample.compile)
    C = loaded.num_classes
    classes = list(cfg.sample.classes) or list(range(C))
    bad = [c for c in classes if not 0 <= c < C]
    if bad:
        raise ValueError(f"sample.classes: {bad} out of range for {C} classes")
    extractor = None
    if wants_classifier(cfg.guidance.minority, bool(cfg.classifier.checkpoint)):  # classifier, or auto with one
        extractor = classifier_feature_space(cfg.classifier.checkpoint, device).extractor
    guidances = guidances_from_config(cfg.guidance, extractor=extractor)
    n = cfg.sample.num_per_class
    labels = torch.tensor(classes).repeat_interleave(n)
    seeds = sample_seeds(cfg.sample.seed, len(labels))
    bs = cfg.sample.batch_size
    out = []
    for a in tqdm(range(0, len(labels), bs), desc="sample", unit="batch", mininterval=1.0):
        out.append(sample(model, loaded.schedule, labels[a:a + bs], seeds[a:a + bs], cfg.sample,
                          guidances=guidances).cpu())
    images = to_uint8(torch.cat(out))
    npz = run.local("samples.npz")
    np.savez_compressed(npz, images=images, labels=labels.numpy(), seeds=np.array(seeds, dtype=np.int64))
    names = list(loaded.extra.get("class_names") or [])
    grid = save_grid_png(images, run.local("samples_grid.png"), nrow=n, scale=2,
                         row_labels=[f"{c} {names[c]}" if c < len(names) and names[c] != str(c) else f"class {c}"
                                     for c in classes])
    run.tracker.log_metrics({"num_images": float(len(images))})
    return {"samples": run.publish(npz, "samples.npz"), "grid": run.publish(grid, "samples_grid.png", "samples"),
            "checkpoint": uri, "num_images": len(images), "classes": classes, "sampler": cfg.sample.sampler,
            "steps": cfg.sample.steps, "omega": cfg.guidance.cfg.omega, "minority_scale": cfg.guidance.minority.scale}



__all__ = ["sample_images"]
