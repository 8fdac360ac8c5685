"""ImageGenerator: ``batch dict in -> batch dict out``; the same object runs in a for-loop or as a Ray Data actor.

It loads a diffusion checkpoint (local or s3://) once, then draws the rows it is given with the
configured sampler (DDPM / DDIM), classifier-free guidance (Ho & Salimans 2021, CBDM convention) and
minority self-guidance (Um & Ye, ECCV 2024). Each row's noise comes from its own seed, so image k is
identical whatever the batch split, the actor or the run. Optionally it records each image's minority
score (Um, Lee & Ye, ICLR 2024). It never writes files or logs.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .. import storage

SCORE_SEED_SALT = 0x5C0E  # minority-score noise uses a seed derived from, but distinct from, the image seed


@dataclass(frozen=True)
class GeneratorSpec:
    """Everything an ImageGenerator needs; picklable, so Ray ships it to actors."""

    checkpoint: str
    checkpoint_digest: str = ""
    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    variance: str = "fixedlarge"
    clip_denoised: bool = False
    use_ema: bool = True
    omega: float = 0.0
    minority: dict[str, Any] = field(default_factory=dict)   # guidance.minority fields
    classifier: str = ""           # classifier checkpoint (for minority distance=classifier)
    minority_score: bool = True
    score_iters: int = 2
    device: str = ""               # "" = cuda when available, else cpu

    @staticmethod
    def from_config(cfg, checkpoint_digest: str = "", device: str = "") -> "GeneratorSpec":
        if not cfg.model.checkpoint:
            raise ValueError("model.checkpoint: a diffusion checkpoint is required to generate (local or s3://)")
        s, m = cfg.sample, cfg.guidance.minority
        return GeneratorSpec(checkpoint=cfg.model.checkpoint, checkpoint_digest=checkpoint_digest, sampler=s.sampler,
                             steps=s.steps, eta=s.eta, variance=s.variance, clip_denoised=s.clip_denoised,
                             use_ema=s.use_ema,
                             omega=cfg.guidance.cfg.omega,
                             minority={k: getattr(m, k) for k in ("scale", "every", "start", "stop", "perturb",
                                                                  "distance", "lpips_weights")},
                             classifier=cfg.classifier.checkpoint, minority_score=cfg.generate.minority_score,
                             score_iters=cfg.generate.score_iters, device=device)

    def settings(self) -> dict[str, Any]:
        """What determines the images (recorded in every sample's json and in the plan digest)."""
        d = asdict(self)
        for k in ("checkpoint", "device"):
            d.pop(k)
        d["minority"] = {k: v for k, v in d["minority"].items() if k != "lpips_weights"}
        return d


def checkpoint_digest(uri: str) -> str:
    """sha256 (16 hex) of a checkpoint's bytes: the json of every sample names the exact weights."""
    fs, path = storage.get_fs(uri)
    h = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _device(name: str) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ImageGenerator:
    """``gen(batch) -> batch`` with ``image`` (uint8 [B,H,W,C]) and, optionally, ``minority_score`` added.

    The batch needs ``label`` and ``seed`` (int arrays); every other column passes through unchanged.
    """

    def __init__(self, spec: GeneratorSpec) -> None:
        from ..diffusion import SamplerSpec, guidance_from_config, load_diffusion

        self.spec = spec
        self.device = _device(spec.device)
        loaded = load_diffusion(spec.checkpoint, device=self.device, use_ema=spec.use_ema)
        self.model, self.schedule = loaded.model, loaded.schedule
        self.num_classes = loaded.num_classes
        self.extra = loaded.extra
        self.sampler = SamplerSpec(spec.sampler, spec.steps, spec.eta, spec.variance, spec.clip_denoised)
        extractor = None
        if spec.minority.get("scale", 0) > 0 and spec.minority.get("distance") == "classifier":
            from ..classify import load_classifier

            clf, _ = load_classifier(spec.classifier, self.device)
            extractor = clf.features
        self.cfg_guidance, self.minority = guidance_from_config(_GuidanceView(spec), extractor)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        s = self.model.spec
        return s.image_size, s.image_size, s.in_channels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..data.types import to_uint8
        from ..diffusion import minority_score, sample

        labels = np.asarray(batch["label"], dtype=np.int64)
        seeds = [int(s) for s in np.asarray(batch["seed"], dtype=np.int64)]
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1} (the checkpoint's classes)")
        out = dict(batch)
        if not len(labels):
            out["image"] = np.zeros((0, *self.image_shape), np.uint8)
            if self.spec.minority_score:
                out["minority_score"] = np.zeros(0, np.float32)
            return out
        y = torch.from_numpy(labels).to(self.device)
        x = sample(self.model, self.schedule, y, seeds, self.sampler, cfg=self.cfg_guidance, minority=self.minority)
        out["image"] = to_uint8(x)
        if self.spec.minority_score:
            score_seeds = [(s ^ SCORE_SEED_SALT) for s in seeds]
            x_q = torch.from_numpy(out["image"]).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # score what is stored
            sc = minority_score(self.model, self.schedule, x_q.to(self.device), y, score_seeds,
                                n_iter=self.spec.score_iters)
            out["minority_score"] = sc.float().cpu().numpy()
        return out


class _GuidanceView:
    """Duck-typed ``guidance`` config section built from a GeneratorSpec (for ``guidance_from_config``)."""

    def __init__(self, spec: GeneratorSpec) -> None:
        class _NS:
            def __init__(self, **kw: Any) -> None:
                self.__dict__.update(kw)

        m = {"scale": 0.0, "every": 5, "start": 0.0, "stop": 1.0, "perturb": 0.8, "distance": "l2",
             "lpips_weights": "", **spec.minority}
        self.cfg = _NS(omega=spec.omega)
        self.minority = _NS(**m)


__all__ = ["ImageGenerator", "GeneratorSpec", "checkpoint_digest"]
