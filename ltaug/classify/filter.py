"""DiffuLT's ID / AID / OOD filter as a pure function over batches (runs in a for-loop or a Ray Data actor).

Shao et al., "DiffuLT", NeurIPS 2024, §3: generated images are categorised by the distance of their
baseline-classifier features to the centre of their condition class; OOD images are dropped (the
default ``filter.keep = (id, aid)``; the paper's ablation also keeps all, AID only, ID+AID).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .bank import CATEGORIES, FeatureBank, extract_features, keep_mask


@dataclass(frozen=True)
class FilterResult:
    distance: Tensor   # [N] ||phi(x) - mu_y||
    category: Tensor   # [N] codes 0 id, 1 aid, 2 ood
    keep: Tensor       # [N] bool


def id_aid_ood(model: nn.Module, bank: FeatureBank, x: Tensor, y: Tensor,
               keep: Sequence[str] = ("id", "aid"), batch_size: int = 256) -> FilterResult:
    """Categorise images ``x`` [N,C,H,W] in [-1, 1] with condition labels ``y`` [N]; mark what ``keep`` keeps."""
    phi = extract_features(model, x, batch_size)
    d, cat = bank.to(phi.device).categorize(phi, y.to(phi.device))
    return FilterResult(d, cat, keep_mask(cat, keep))


def images_to_model_range(images: np.ndarray | Tensor) -> Tensor:
    """uint8 ``[N,H,W,C]`` -> float ``[N,C,H,W]`` in [-1, 1]; float input is taken as already in range."""
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        t = torch.from_numpy(np.ascontiguousarray(images))
        if t.ndim == 3:
            t = t[..., None]
        return t.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    t = torch.as_tensor(images)
    if t.dtype == torch.uint8:
        return images_to_model_range(t.cpu().numpy())
    return t.float()


class IdAidOodFilter:
    """``filter(batch: dict[str, np.ndarray]) -> dict``: adds ``distance``, ``category`` (code), ``keep``.

    With ``drop=True`` only the kept rows of every column are returned. The model is moved to
    ``device`` once; nothing is written or logged here (the pipeline's writer does that).
    """

    def __init__(self, model: nn.Module, bank: FeatureBank, keep: Sequence[str] = ("id", "aid"),
                 drop: bool = True, image_key: str = "image", label_key: str = "label",
                 batch_size: int = 256, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.bank = bank.to(self.device)
        self.keep, self.drop = tuple(keep), drop
        self.image_key, self.label_key, self.batch_size = image_key, label_key, batch_size
        keep_mask(torch.zeros(0, dtype=torch.long), self.keep)  # validate the names early

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        x = images_to_model_range(batch[self.image_key])
        y = torch.as_tensor(np.asarray(batch[self.label_key])).long()
        r = id_aid_ood(self.model, self.bank, x.to(self.device), y.to(self.device), self.keep, self.batch_size)
        out = dict(batch)
        out["distance"] = r.distance.cpu().numpy().astype(np.float32)
        out["category"] = r.category.cpu().numpy().astype(np.int64)
        out["keep"] = r.keep.cpu().numpy()
        if self.drop:
            m = out["keep"]
            out = {k: (np.asarray(v)[m] if _is_rows(v, len(m)) else v) for k, v in out.items()}
        return out


def _is_rows(v: Any, n: int) -> bool:
    return hasattr(v, "__len__") and not isinstance(v, (str, bytes)) and len(v) == n


__all__ = ["CATEGORIES", "FilterResult", "IdAidOodFilter", "id_aid_ood", "images_to_model_range"]
