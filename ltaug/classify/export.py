"""A trained classifier as safetensors + a JSON record, and the small loader that rebuilds it.

``classifier/model.safetensors`` holds the weights (EMA when the checkpoint used them) and the feature bank
(``bank.centers``, ``bank.radii``, ``bank.counts``); ``classifier/config.json`` the architecture
(``ModelSpec``), class names, groups and the input convention (images in [-1, 1], NCHW; the model
normalises internally). Loading needs torch + safetensors + this module only::

    model, bank = load_exported_classifier("export/classifier")
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch

from ..train import checkpoint as ckpt_io
from .bank import FeatureBank
from .resnet import ModelSpec, build_classifier

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
BANK_PREFIX = "bank."


def export_classifier(ckpt_uri: str, out_dir: str) -> dict[str, str]:
    """Write the classifier checkpoint ``ckpt_uri`` into the local directory ``out_dir``; the written files."""
    from safetensors.torch import save_file

    ck = ckpt_io.open_checkpoint(ckpt_uri)
    extra = ck.get("extra") or {}
    if ck.get("kind") != "classifier" or "model_spec" not in extra:
        raise ckpt_io.CheckpointError(f"{ckpt_uri}: not a classifier checkpoint (kind {ck.get('kind')!r})")
    use_ema = bool(extra.get("use_ema") and ck.get("ema") is not None)
    weights = {k: v.detach().float().cpu().contiguous().clone() if v.is_floating_point() else v.cpu().contiguous().clone()
               for k, v in (ck["ema"] if use_ema else ck["model"]).items()}
    for k, v in (extra.get("feature_bank") or {}).items():
        weights[BANK_PREFIX + k] = v.detach().float().cpu().contiguous()
    os.makedirs(out_dir, exist_ok=True)
    files = {"weights": os.path.join(out_dir, WEIGHTS_NAME), "config": os.path.join(out_dir, CONFIG_NAME)}
    save_file(weights, files["weights"], metadata={"format": "pt"})
    record = {"format": "ltaug-classifier-v1", "model_spec": dict(extra["model_spec"]), "source_checkpoint": ck["_uri"],
              "step": int(ck.get("step", 0)), "weights": "ema" if use_ema else "model",
              "class_names": list(extra.get("class_names") or []), "groups": extra.get("groups"),
              "input": "float images in [-1, 1], NCHW", "has_feature_bank": "feature_bank" in extra}
    with open(files["config"], "w") as fh:
        json.dump(record, fh, indent=2, default=str)
    return files


def load_exported_classifier(directory: str, device: str | torch.device = "cpu") -> tuple[Any, FeatureBank | None]:
    """``(model in eval mode, feature bank or None)`` from an :func:`export_classifier` directory."""
    from safetensors.torch import load_file

    with open(os.path.join(directory, CONFIG_NAME)) as fh:
        record = json.load(fh)
    tensors = load_file(os.path.join(directory, WEIGHTS_NAME))
    model = build_classifier(ModelSpec(**record["model_spec"]))
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(BANK_PREFIX)})
    bank_t = {k[len(BANK_PREFIX):]: v for k, v in tensors.items() if k.startswith(BANK_PREFIX)}
    bank = FeatureBank.from_state_dict(bank_t).to(device) if bank_t else None
    return model.to(device).eval(), bank


__all__ = ["export_classifier", "load_exported_classifier"]
