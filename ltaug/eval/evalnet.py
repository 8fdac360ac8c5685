"""The evaluation network of the generative protocol: a classifier trained once on ALL training images of the
source (the full train split, not the long-tailed subset: the images the long-tail profile leaves unused are
used too; class-balanced sampling, ``classifier.method=resample``), cached and loaded on re-use.

It takes no part in diffusion training, generation or ID/AID/OOD filtering; it gives the protocol its feature
space (``eval.features=evalnet``) and ``class_consistency`` (its top-1 on the samples' conditioning labels).
Cache: ``<data cache root>/evalnet/<source>-<digest>/`` with ``ckpt-*.pt`` and ``evalnet.json`` (written last,
the commit marker). The digest covers the source and every data setting (the full-train artifact's digest),
the evalnet's classifier settings and ``eval.evalnet_seed`` (not the run's seed: every seed of a multi-seed
study shares one evaluation feature space).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import nn

from .. import storage
from ..classify import load_classifier, train_classifier
from ..config import DataConfig
from ..data.artifact import dataset_digest, load_data
from ..data.dataset import LTDataset
from ..train import LocalWorld

MARKER = "evalnet.json"
# classifier keys that cannot change the evalnet's weights (where / how often it logs or evaluates)
NON_WEIGHT_KEYS = ("checkpoint", "synthetic_uri", "log_every", "ckpt_every", "keep_checkpoints", "eval_batch_size")


def full_train_config(dcfg: DataConfig) -> DataConfig:
    """The data config of the source's whole train split: no long-tail profile, no validation split."""
    return replace(dcfg, imbalance_ratio=1.0, max_per_class=0, val_per_class=0)


def evalnet_classifier_config(cfg: Any) -> Any:
    """``cfg.classifier`` as the evalnet trains it: ``eval.evalnet_steps`` steps, class-balanced sampling, no
    synthetic data, no baseline."""
    return replace(cfg.classifier, steps=cfg.eval.evalnet_steps, epochs=0.0, method="resample", checkpoint="",
                   synthetic_uri="", ckpt_every=0, keep_checkpoints=1)


def evalnet_digest(cfg: Any) -> str:
    c = {k: v for k, v in asdict(evalnet_classifier_config(cfg)).items() if k not in NON_WEIGHT_KEYS}
    text = json.dumps({"data": dataset_digest(full_train_config(cfg.data)), "source": cfg.data.source,
                       "classifier": c, "seed": int(cfg.eval.evalnet_seed)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def evalnet_dir(cfg: Any, cache_root: str) -> str:
    return storage.join(cache_root, "evalnet", f"{cfg.data.source}-{evalnet_digest(cfg)}")


def full_train_data(cfg: Any, cache_root: str) -> LTDataset:
    """The source's whole train split (its own dataset artifact under ``cache_root``)."""
    return load_data(full_train_config(cfg.data), cache_root)[0]


def load_or_train_evalnet(cfg: Any, cache_root: str, device: torch.device | str = "cpu",
                          log: Any = print) -> tuple[nn.Module, dict[str, Any]]:
    """(evalnet in eval mode on ``device``, info {checkpoint, digest, cached, num_train, steps}): loaded from the
    cache when its marker exists, else trained on the full train split, written, then marked."""
    d = evalnet_dir(cfg, cache_root)
    marker = storage.join(d, MARKER)
    if storage.exists(marker):
        info = json.loads(storage.read_bytes(marker))
        ckpt = storage.join(d, "checkpoints", info["checkpoint_name"])   # relative: the cache may move
        model, _ = load_classifier(ckpt, device)
        return model, {**info, "checkpoint": ckpt, "cached": True}
    full = full_train_data(cfg, cache_root)
    if log:
        log(f"[evalnet] training the evaluation network on all {len(full.train)} training images of "
            f"{cfg.data.source} ({cfg.eval.evalnet_steps} steps, class-balanced); cached in {d}")
    ccfg = evalnet_classifier_config(cfg)
    seeded = replace(cfg, classifier=ccfg, seed=int(cfg.eval.evalnet_seed))
    res = train_classifier(seeded, full, LocalWorld(device), storage.join(d, "checkpoints"), progress=False,
                           resume=False)
    info = {"checkpoint_name": res.checkpoint.rstrip("/").rsplit("/", 1)[-1], "digest": evalnet_digest(cfg), "num_train": len(full.train),
            "class_counts": list(full.train.counts.counts), "steps": res.steps, "arch": ccfg.arch,
            "source": cfg.data.source}
    storage.write_text(marker, json.dumps(info, indent=1))
    return res.model.eval(), {**info, "checkpoint": res.checkpoint, "cached": False}


__all__ = ["load_or_train_evalnet", "evalnet_dir", "evalnet_digest", "full_train_config", "full_train_data",
           "evalnet_classifier_config"]
