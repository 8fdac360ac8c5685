"""Sample `sample.num_per_class` images of every class (or of `sample.classes`) from the diffusion
checkpoint `model.checkpoint`, with the configured sampler (`sample.sampler` ddpm|ddim, `sample.steps`),
classifier-free guidance (`guidance.cfg.omega`) and minority self-guidance (`guidance.minority.scale`,
`guidance.minority.every`). Writes samples.npz (images uint8 NxHxWxC, labels, seeds) and a grid PNG
(one row per class); prints the run dir last. Image k depends only on its label and seed.

    python jobs/sample.py --config configs/quickstart.yaml --set model.checkpoint=runs/train_diffusion-XXXX/checkpoints
    python jobs/sample.py --config configs/quickstart.yaml --set model.checkpoint=ckpt.pt \\
        --set sample.sampler=ddpm --set sample.steps=250 --set guidance.minority.scale=0.4
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # ray job submit --working-dir .

import numpy as np
import torch

from ltaug.cli import job_main
from ltaug.data import to_uint8
from ltaug.diffusion import SamplerSpec, guidance_from_config, load_diffusion, sample, sample_seeds
from ltaug.diffusion.io import classifier_feature_space, save_grid_png
from ltaug.train import checkpoint as ckpt_io


def resolve_checkpoint(uri: str) -> str:
    if not uri:
        raise ValueError("model.checkpoint is required (a diffusion checkpoint file or checkpoints directory)")
    if uri.endswith(".pt"):
        return uri
    found = ckpt_io.list_checkpoints(uri)
    if not found:
        raise FileNotFoundError(f"no checkpoint under {uri}")
    return found[-1][1]


def body(cfg, run, args) -> dict:
    device = torch.device("cuda" if cfg.resources.use_gpu else "cpu")
    uri = resolve_checkpoint(cfg.model.checkpoint)
    loaded = load_diffusion(uri, device, use_ema=cfg.sample.use_ema)
    C = loaded.num_classes
    classes = list(cfg.sample.classes) or list(range(C))
    bad = [c for c in classes if not 0 <= c < C]
    if bad:
        raise ValueError(f"sample.classes: {bad} out of range for {C} classes")
    extractor = None
    if cfg.guidance.minority.scale > 0 and cfg.guidance.minority.distance == "classifier":
        extractor = classifier_feature_space(cfg.classifier.checkpoint, device).extractor
    cfg_g, minority = guidance_from_config(cfg.guidance, extractor)
    spec = SamplerSpec.from_config(cfg.sample)
    n = cfg.sample.num_per_class
    labels = torch.tensor(classes).repeat_interleave(n)
    seeds = sample_seeds(cfg.sample.seed, len(labels))
    bs = cfg.sample.batch_size
    out = []
    for a in range(0, len(labels), bs):
        out.append(sample(loaded.model, loaded.schedule, labels[a:a + bs], seeds[a:a + bs], spec,
                          cfg=cfg_g, minority=minority).cpu())
        print(f"sampled {min(a + bs, len(labels))}/{len(labels)}", file=sys.stderr)
    images = to_uint8(torch.cat(out))
    npz = run.local("samples.npz")
    np.savez_compressed(npz, images=images, labels=labels.numpy(), seeds=np.array(seeds, dtype=np.int64))
    grid = save_grid_png(images, run.local("samples_grid.png"), nrow=n, scale=2)
    run.tracker.log_metrics({"num_images": float(len(images))})
    return {"samples": run.publish(npz, "samples.npz"), "grid": run.publish(grid, "samples_grid.png", "samples"),
            "checkpoint": uri, "num_images": len(images), "classes": classes, "sampler": spec.sampler,
            "steps": spec.steps, "omega": cfg.guidance.cfg.omega, "minority_scale": cfg.guidance.minority.scale}


if __name__ == "__main__":
    sys.exit(job_main("sample", __doc__.split("\n\n")[0], body))
