"""ImageGenerator: ``batch dict in -> batch dict out``; the same object runs in a for-loop or as a Ray Data actor.

It loads a diffusion checkpoint (local or s3://) once, then draws the rows it is given with the sampler
of ``cfg.sample`` (DDPM / DDIM) and the guidances of ``cfg.guidance`` (classifier-free guidance, Ho &
Salimans 2021, CBDM convention; minority self-guidance, Um & Ye, ECCV 2024; any plug-in of
``GUIDANCES``). Each row's noise comes from its own seed, so image k is identical whatever the batch
split, the actor or the run. Optionally it records each image's minority score (Um, Lee & Ye, ICLR
2024). It never writes files or logs, and it has no device policy: the caller passes the device.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from .. import storage

SCORE_SEED_SALT = 0x5C0E  # minority-score noise uses a seed derived from, but distinct from, the image seed
SAMPLER_KEYS = ("sampler", "steps", "eta", "variance", "clip_denoised")  # the sample keys that change an image
BNS_KEYS = {"bns_gamma": 1.0, "bns_skip": 0}  # Boost-and-Skip: in the digest only when switched on (old digests hold)
LOCAL_ONLY_KEYS = ("lpips_weights",)  # guidance keys naming a local file: where it lies never changes an image


def generation_settings(cfg: Any, checkpoint_digest: str) -> dict[str, Any]:
    """What determines the images of ``cfg`` (root ``Config``): the plan digest and every sample's json.

    Sampler settings, ``use_ema``, every guidance section (a switched-off one only as its scale, so keys
    that cannot change an image cannot change the digest), ``minority_score``, ``score_iters`` and the
    checkpoint digest. Never the checkpoint path, the device or a local weights path."""
    from ..diffusion import GUIDANCES
    from ..diffusion.guidance import resolve_distance

    s = cfg.sample
    guidance: dict[str, Any] = {}
    for name, cls in GUIDANCES.items():
        section = getattr(cfg.guidance, name)
        if cls.switched_on(section):
            guidance[name] = {k: v for k, v in asdict(section).items() if k not in LOCAL_ONLY_KEYS}
            if guidance[name].get("distance") == "auto":  # as used: classifier with a classifier, else l2
                guidance[name]["distance"] = resolve_distance("auto", bool(cfg.classifier.checkpoint))
        else:
            guidance[name] = {cls.scale_key: getattr(section, cls.scale_key)}
    sampler = {k: getattr(s, k) for k in SAMPLER_KEYS}
    sampler.update({k: getattr(s, k) for k, off in BNS_KEYS.items() if getattr(s, k) != off})
    if s.compile != "off":   # compiled kernels round differently: one run's shards all come from one setting
        sampler["compile"] = s.compile
    if any(cls.switched_on(getattr(cfg.guidance, name)) and name == "minority" for name, cls in GUIDANCES.items()):
        guidance["minority"]["noise"] = "own-stream"   # since its re-noising stopped sharing the sampler's stream
    return {"sampler": sampler, "use_ema": s.use_ema, "guidance": guidance,
            "minority_score": cfg.generate.minority_score, "score_iters": cfg.generate.score_iters,
            "checkpoint_digest": checkpoint_digest}


def checkpoint_digest(uri: str) -> str:
    """sha256 (16 hex) of a checkpoint's bytes: the json of every sample names the exact weights."""
    fs, path = storage.get_fs(uri)
    h = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


class ImageGenerator:
    """``gen(batch) -> batch`` with ``image`` (uint8 [B,H,W,C]) and, optionally, ``minority_score`` added.

    ``cfg``: the frozen root ``Config`` (reads ``sample``, ``guidance``, ``generate.minority_score``,
    ``generate.score_iters`` and ``classifier.checkpoint`` for the minority ``classifier`` distance);
    ``checkpoint``: a diffusion checkpoint file or directory (local or s3://); ``device``: where to run
    (a ``torch.device`` or string; callers pick it with ``ltaug.train.resolve_device``).

    The batch needs ``label`` and ``seed`` (int arrays); every other column passes through unchanged.
    The model is built in ``__init__``; pickling keeps only the constructor arguments and the copy
    rebuilds the model on first use (so Ray can ship an instance or build one from the same kwargs).
    """

    def __init__(self, cfg: Any, checkpoint: str, device: torch.device | str, *, checkpoint_digest: str = "") -> None:
        if not checkpoint:
            raise ValueError("model.checkpoint: a diffusion checkpoint is required to generate (local or s3://)")
        self.cfg, self.checkpoint, self.checkpoint_digest = cfg, checkpoint, checkpoint_digest
        self.device = torch.device(device)
        self._built: dict[str, Any] | None = None
        self._build()

    # -- construction and pickling --------------------------------------------------------------
    def _build(self) -> dict[str, Any]:
        if self._built is None:
            from ..diffusion import for_sampling, guidances_from_config, load_diffusion
            from ..diffusion.guidance import wants_classifier

            loaded = load_diffusion(self.checkpoint, device=self.device, use_ema=self.cfg.sample.use_ema)
            loaded.model = for_sampling(loaded.model, self.cfg.sample.compile)
            m = self.cfg.guidance.minority
            extractor = None
            if wants_classifier(m, bool(self.cfg.classifier.checkpoint)):   # distance auto: the classifier when given
                extractor = self._classifier_features()
            self._built = {"model": loaded.model, "schedule": loaded.schedule, "extra": loaded.extra,
                           "guidances": guidances_from_config(self.cfg.guidance, extractor=extractor)}
        return self._built

    def _classifier_features(self):
        uri = self.cfg.classifier.checkpoint
        if not uri:
            raise ValueError("guidance.minority.distance=classifier needs classifier.checkpoint")
        from ..classify import load_classifier

        clf, _ = load_classifier(uri, self.device)
        for p in clf.parameters():
            p.requires_grad_(False)
        return clf.features

    def __getstate__(self) -> dict[str, Any]:
        return {"cfg": self.cfg, "checkpoint": self.checkpoint, "device": str(self.device),
                "checkpoint_digest": self.checkpoint_digest}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.cfg, self.checkpoint = state["cfg"], state["checkpoint"]
        self.checkpoint_digest, self.device = state["checkpoint_digest"], torch.device(state["device"])
        self._built = None  # rebuilt on first use, where the copy runs

    # -- what it is -------------------------------------------------------------------------------
    @property
    def model(self):
        return self._build()["model"]

    @property
    def schedule(self):
        return self._build()["schedule"]

    @property
    def extra(self) -> dict[str, Any]:
        return self._build()["extra"]

    @property
    def guidances(self) -> list:
        return self._build()["guidances"]

    @property
    def num_classes(self) -> int:
        return self.model.spec.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        s = self.model.spec
        return s.image_size, s.image_size, s.in_channels

    def settings(self) -> dict[str, Any]:
        """:func:`generation_settings` of this generator."""
        return generation_settings(self.cfg, self.checkpoint_digest)

    # -- the UDF ----------------------------------------------------------------------------------
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..data.types import to_uint8
        from ..diffusion import minority_score, sample

        b = self._build()
        model, schedule = b["model"], b["schedule"]
        labels = np.asarray(batch["label"], dtype=np.int64)
        seeds = [int(s) for s in np.asarray(batch["seed"], dtype=np.int64)]
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1} (the checkpoint's classes)")
        out = dict(batch)
        score = self.cfg.generate.minority_score
        if not len(labels):
            out["image"] = np.zeros((0, *self.image_shape), np.uint8)
            if score:
                out["minority_score"] = np.zeros(0, np.float32)
            return out
        y = torch.from_numpy(labels).to(self.device)
        x = sample(model, schedule, y, seeds, self.cfg.sample, guidances=b["guidances"])
        out["image"] = to_uint8(x)
        if score:
            score_seeds = [(s ^ SCORE_SEED_SALT) for s in seeds]
            x_q = torch.from_numpy(out["image"]).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # score what is stored
            sc = minority_score(model, schedule, x_q.to(self.device), y, score_seeds,
                                n_iter=self.cfg.generate.score_iters)
            out["minority_score"] = sc.float().cpu().numpy()
        return out


__all__ = ["ImageGenerator", "generation_settings", "checkpoint_digest"]
