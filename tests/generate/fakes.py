"""Tiny checkpoints for generation tests: a random-weight diffusion UNet and a classifier with a feature bank."""
from __future__ import annotations

import os

import torch

from ltaug.train import checkpoint as ckpt_io

COUNTS = (20, 12, 6, 3)   # a tiny long tail: the plan tops classes 1..3 up to 20


def tiny_diffusion_checkpoint(path: str, counts=COUNTS, image_size: int = 8, channels: int = 1, seed: int = 0,
                              preset: str = "", class_names: tuple[str, ...] = ()) -> str:
    """A randomly initialised diffusion checkpoint: a micro UNet (ch 8) for fast tests, or a model preset's
    architecture (e.g. ``preset="tiny"``, the quickstart UNet) for benchmarks that need real compute."""
    from ltaug.diffusion import UNet, UNetSpec
    from ltaug.diffusion.unet import PRESETS

    torch.manual_seed(seed)
    arch = dict(PRESETS[preset]) if preset else dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                                                     dropout=0.0, num_heads=1, groups=4)
    spec = UNetSpec(in_channels=channels, image_size=image_size, num_classes=len(counts), **arch)
    model = UNet(spec)
    sd = dict(spec.__dict__)
    sd = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sd.items()}
    ckpt_io.save(path, {"kind": "diffusion", "config": {"diffusion": {"timesteps": 100}}, "model": model.state_dict(),
                        "ema": None, "optimizer": {}, "step": 1, "rng": ckpt_io.rng_state(),
                        "extra": {"num_classes": len(counts), "channels": channels, "image_size": image_size,
                                  "counts": list(counts), "spec": sd,
                                  **({"class_names": list(class_names)} if class_names else {})}})
    return path


def tiny_classifier_checkpoint(path: str, num_classes: int = len(COUNTS), image_size: int = 8, channels: int = 1,
                               radius_scale: float = 1.0, seed: int = 0) -> str:
    """A random classifier whose bank is built from random images (radius scaled to make OOD likely)."""
    from ltaug.classify import ModelSpec, build_bank, build_classifier, extract_features

    torch.manual_seed(seed)
    spec = ModelSpec("resnet20", num_classes, channels, image_size, width=4)
    model = build_classifier(spec).eval()
    x = torch.rand(64, channels, image_size, image_size) * 2 - 1
    y = torch.arange(64) % num_classes
    bank = build_bank(extract_features(model, x), y, num_classes)
    bank = type(bank)(bank.centers, bank.radii * radius_scale, bank.counts)
    ckpt_io.save(path, {"kind": "classifier", "config": {}, "model": model.state_dict(), "ema": None,
                        "optimizer": {}, "step": 1, "rng": ckpt_io.rng_state(),
                        "extra": {"model_spec": spec.to_dict(), "use_ema": False, "feature_bank": bank.state_dict()}})
    return path


def gen_overrides(ckpt: str, out: str, run_dir: str, *extra: str) -> list[str]:
    return ["--set", f"model.checkpoint={ckpt}", "--set", f"generate.output_uri={out}", "--set",
            f"run.output_dir={run_dir}", "--set", "tracking.uri=none", "--set", "sample.steps=3",
            "--set", "generate.shard_size=8", "--set", "generate.batch_size=5", "--set", "generate.score_iters=1",
            *[a for e in extra for a in ("--set", e)]]


def ensure_dir(p: str) -> str:
    os.makedirs(p, exist_ok=True)
    return p


def to_legacy_layout(out, stats_dir: str = ".ltaug/stats") -> None:
    """Rewrite a local generation output into an earlier version's layout: each tar without its stats member,
    its stats (``bytes`` = the new size) in ``<out>/<stats_dir>/<shard>.json``."""
    import io
    import json
    import tarfile
    from pathlib import Path

    from ltaug.generate.shards import STATS_MEMBER

    for p in sorted(Path(out).glob("*.tar")):
        with tarfile.open(p) as t:
            members = t.getmembers()
            assert members[0].name == STATS_MEMBER
            stats = json.loads(t.extractfile(members[0]).read())
            rest = [(m, t.extractfile(m).read()) for m in members[1:]]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
            for m, data in rest:
                t.addfile(m, io.BytesIO(data))
        p.write_bytes(buf.getvalue())
        stats["bytes"] = len(buf.getvalue())
        d = Path(out, stats_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / p.name.replace(".tar", ".json")).write_text(json.dumps(stats))
