"""The in-memory labelled image set every source produces."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .counts import ClassCounts


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 ``[N,H,W,C]`` (already resized to ``data.image_size``) with int64 labels ``[N]``."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] = ()
    source: str = ""
    skipped: int = 0          # bad records skipped (on_bad_record=skip), counted, never silent
    indices: np.ndarray | None = field(default=None, repr=False)  # row ids in the source split

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"{self.source}: images must be uint8 [N,H,W,C], got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{self.source}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def counts(self) -> ClassCounts:
        return ClassCounts.from_labels(self.labels, self.num_classes)

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def subset(self, idx: np.ndarray) -> "ImageSet":
        idx = np.asarray(idx, dtype=np.int64)
        base = self.indices if self.indices is not None else np.arange(len(self))
        return ImageSet(self.images[idx], self.labels[idx], self.num_classes, self.class_names,
                        self.source, self.skipped, base[idx])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0 float32 [N,C,H,W] in [-1, 1], y int64 [N]) for diffusion and classifiers."""
        return to_model_range(self.images), torch.from_numpy(self.labels.astype(np.int64))


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 [N,H,W,C] -> float32 [N,C,H,W] in [-1, 1].

    The float conversion is the only copy, so read-only (memory-mapped) input works without a warning.
    """
    x = torch.from_numpy(np.array(images, dtype=np.float32)).permute(0, 3, 1, 2)
    return x.div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float [N,C,H,W] in [-1, 1] -> uint8 [N,H,W,C] (clipped, rounded)."""
    y = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return y.permute(0, 2, 3, 1).cpu().numpy()
