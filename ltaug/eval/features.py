"""Pluggable feature spaces for the generative metrics: ``space(x [N,C,H,W] in [-1,1]) -> [N, D]``.

- ``classifier`` (default): the project classifier's penultimate features (DiffuLT's phi).
- ``inception``: torchvision's Inception-v3 pool features (2048-d; Szegedy et al., "Rethinking the
  Inception Architecture", CVPR 2016), built without weights and loaded from a *local* state_dict
  file. Nothing is ever downloaded. Note: torchvision's ImageNet weights are not the TF-FID weights,
  so numbers are comparable within this project, not with published FIDs.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..classify.bank import extract_features

INCEPTION_SIZE = 299
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ClassifierFeatures:
    """Penultimate features of a project classifier (it normalises its inputs itself)."""

    def __init__(self, model: nn.Module, batch_size: int = 256) -> None:
        self.model, self.batch_size = model.eval(), batch_size

    def __call__(self, x: Tensor) -> Tensor:
        return extract_features(self.model, x, self.batch_size)


class InceptionFeatures:
    """Inception-v3 pool3 features from a local weights file (gray -> 3 channels, bilinear resize to 299)."""

    def __init__(self, weights_path: str, device: torch.device | str = "cpu", batch_size: int = 64) -> None:
        if not weights_path:
            raise ValueError("eval.inception_weights: a local Inception-v3 state_dict file is required "
                             "for eval.features=inception (ltaug never downloads weights)")
        from torchvision.models import inception_v3

        from .. import storage

        net = inception_v3(weights=None, aux_logits=True, init_weights=False)
        sd = torch.load(storage.bytes_io(weights_path), map_location="cpu", weights_only=True)
        net.load_state_dict(sd.get("state_dict", sd) if isinstance(sd, dict) else sd, strict=False)
        net.fc = nn.Identity()
        self.net = net.eval().to(device)
        self.device, self.batch_size = torch.device(device), batch_size
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        out = []
        for i in range(0, len(x), self.batch_size):
            b = x[i:i + self.batch_size].to(self.device).float()
            if b.shape[1] == 1:
                b = b.repeat(1, 3, 1, 1)
            b = F.interpolate((b + 1) / 2, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
            out.append(self.net((b - self.mean) / self.std).float())
        return torch.cat(out).to(x.device)


FeatureSpace = Callable[[Tensor], Tensor]

FEATURE_SPACES: dict[str, Callable[..., FeatureSpace]] = {
    "classifier": lambda eval_cfg, classifier=None, device="cpu": _classifier_space(classifier),
    "inception": lambda eval_cfg, classifier=None, device="cpu": InceptionFeatures(eval_cfg.inception_weights, device),
}


def _classifier_space(model: nn.Module | None) -> ClassifierFeatures:
    if model is None:
        raise ValueError("eval.features=classifier needs a classifier (classifier.checkpoint)")
    return ClassifierFeatures(model)


def make_feature_space(eval_cfg: Any, classifier: nn.Module | None = None, device: torch.device | str = "cpu") -> FeatureSpace:
    """The feature space named by ``eval_cfg.features``."""
    if eval_cfg.features not in FEATURE_SPACES:
        raise ValueError(f"eval.features {eval_cfg.features!r}; choose one of {sorted(FEATURE_SPACES)}")
    return FEATURE_SPACES[eval_cfg.features](eval_cfg, classifier=classifier, device=device)
