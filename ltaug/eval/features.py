"""Feature spaces of the generative protocol: ``space(x [N,C,H,W] in [-1,1]) -> [N, D]``.

- ``evalnet``: the penultimate features of the *evaluation network* (:mod:`ltaug.eval.evalnet`), a classifier
  trained once on all training images of the source (class-balanced) that takes no part in training or filtering.
- ``inception``: torchvision's Inception-v3 pool features (2048-d; Szegedy et al., "Rethinking the Inception
  Architecture", CVPR 2016) from a *local* state_dict file, loaded with ``strict=True``. The input is what
  torchvision's ImageNet weights expect: [0, 1] RGB (gray repeated to 3 channels), bilinear resize to 299,
  ImageNet mean/std normalisation, and the network built with ``transform_input=True`` (as torchvision builds it
  for its weights, which were ported from TF and re-scale internally). Nothing is ever downloaded. torchvision's
  weights are not the TF-FID weights: numbers are comparable within this project, not with published FIDs.
- ``auto``: ``inception`` when ``eval.inception_weights`` is set, else ``evalnet``.
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


def inception_input(x: Tensor) -> Tensor:
    """``[N,C,H,W]`` in [-1, 1] -> ``[N,3,299,299]`` as torchvision's Inception-v3 weights expect: [0, 1] RGB
    (gray repeated), bilinear resize to 299, ImageNet mean/std normalisation."""
    b = (x.float().clamp(-1, 1) + 1) / 2
    if b.shape[1] == 1:
        b = b.repeat(1, 3, 1, 1)
    if b.shape[1] != 3:
        raise ValueError(f"inception features need 1 or 3 channels, got {b.shape[1]}")
    b = F.interpolate(b, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=b.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=b.device).view(1, 3, 1, 1)
    return (b - mean) / std


def load_inception(weights_path: str) -> nn.Module:
    """torchvision Inception-v3 from a local state_dict file, ``strict=True``: a partial or mismatched file is an
    error naming ``eval.inception_weights`` (a file saved without the auxiliary head is accepted as such)."""
    if not weights_path:
        raise ValueError("eval.inception_weights: a local Inception-v3 state_dict file is required "
                         "for eval.features=inception (ltaug never downloads weights)")
    from torchvision.models import inception_v3

    from .. import storage

    try:
        sd = torch.load(storage.bytes_io(weights_path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unreadable file: one line naming the key
        raise ValueError(f"eval.inception_weights: {weights_path}: not a readable state_dict ({e})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd:
        raise ValueError(f"eval.inception_weights: {weights_path}: expected a state_dict (a dict of tensors)")
    aux = any(str(k).startswith("AuxLogits.") for k in sd)
    net = inception_v3(weights=None, aux_logits=aux, init_weights=False, transform_input=True)
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        missing, unexpected = net.state_dict().keys() - sd.keys(), sd.keys() - net.state_dict().keys()
        what = (f"{len(missing)} missing key(s) (e.g. {sorted(missing)[:3]}), {len(unexpected)} unexpected "
                f"(e.g. {sorted(map(str, unexpected))[:3]})" if missing or unexpected
                else str(e).splitlines()[-1].strip() if str(e).strip() else "shape mismatch")
        raise ValueError(f"eval.inception_weights: {weights_path}: not a complete torchvision Inception-v3 "
                         f"state_dict: {what}") from None
    net.fc = nn.Identity()
    return net.eval()


class InceptionFeatures:
    """Inception-v3 2048-d pool features from a local weights file (:func:`inception_input`, strict load)."""

    def __init__(self, weights_path: str, device: torch.device | str = "cpu", batch_size: int = 64) -> None:
        self.device, self.batch_size = torch.device(device), batch_size
        self.net = load_inception(weights_path).to(self.device)

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        out = [self.net(inception_input(x[i:i + self.batch_size].to(self.device))).float().cpu()
               for i in range(0, len(x), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, 2048)


FeatureSpace = Callable[[Tensor], Tensor]
FEATURE_SPACES: dict[str, Callable[..., FeatureSpace]] = {
    "evalnet": lambda eval_cfg, evalnet=None, device="cpu": _evalnet_space(evalnet),
    "inception": lambda eval_cfg, evalnet=None, device="cpu": InceptionFeatures(eval_cfg.inception_weights, device),
}


def resolve_features(eval_cfg: Any) -> str:
    """``eval.features`` with ``auto`` resolved: inception when ``eval.inception_weights`` is set, else evalnet."""
    name = eval_cfg.features
    if name == "auto":
        return "inception" if eval_cfg.inception_weights else "evalnet"
    if name not in FEATURE_SPACES:
        raise ValueError(f"eval.features {name!r}; choose one of {['auto', *sorted(FEATURE_SPACES)]}")
    return name


def _evalnet_space(model: nn.Module | None) -> ClassifierFeatures:
    if model is None:
        raise ValueError("eval.features=evalnet needs the evaluation network (ltaug.eval.evalnet.load_or_train_evalnet)")
    return ClassifierFeatures(model)


def make_feature_space(eval_cfg: Any, evalnet: nn.Module | None = None,
                       device: torch.device | str = "cpu") -> FeatureSpace:
    """The feature space named by ``eval_cfg.features`` (``auto`` resolved)."""
    return FEATURE_SPACES[resolve_features(eval_cfg)](eval_cfg, evalnet=evalnet, device=device)
