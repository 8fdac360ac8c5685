"""Class counts as a value, and many / medium / few groups (Cao et al. LDAM-DRW; Kang et al. 2020)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MANY_THRESHOLD = 100  # many: > 100 training images (LT recognition convention, Liu et al. 2019)
FEW_THRESHOLD = 20    # few: < 20 training images


@dataclass(frozen=True)
class ClassCounts:
    """Training images per class, indexed by class id. A value: hashable, comparable, serialisable."""

    counts: tuple[int, ...]

    @staticmethod
    def from_labels(labels, num_classes: int | None = None) -> "ClassCounts":
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
        if y.size and y.min() < 0:
            raise ValueError(f"negative label {int(y.min())}")
        c = num_classes if num_classes is not None else (int(y.max()) + 1 if y.size else 0)
        if y.size and y.max() >= c:
            raise ValueError(f"label {int(y.max())} out of range for {c} classes")
        return ClassCounts(tuple(int(v) for v in np.bincount(y, minlength=c)))

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    @property
    def total(self) -> int:
        return int(sum(self.counts))

    @property
    def imbalance_ratio(self) -> float:
        nz = [c for c in self.counts if c > 0]
        return max(nz) / min(nz) if nz else 1.0

    def frequencies(self) -> np.ndarray:
        a = np.asarray(self.counts, dtype=np.float64)
        return a / max(a.sum(), 1.0)

    def as_array(self) -> np.ndarray:
        return np.asarray(self.counts, dtype=np.int64)

    def groups(self, mode: str = "auto", many: int = MANY_THRESHOLD, few: int = FEW_THRESHOLD) -> dict[str, list[int]]:
        """Class indices of ``many`` / ``medium`` / ``few``.

        ``thresholds``: many > ``many``, few < ``few``, medium otherwise (CIFAR-100-LT r=100 gives 35/35/30).
        ``terciles``: classes sorted by count (ties by index) cut into three near-equal parts.
        ``auto``: thresholds, unless that leaves a group empty, then terciles (small datasets).
        """
        if mode not in ("auto", "thresholds", "terciles"):
            raise ValueError(f"groups mode {mode!r}; choose auto, thresholds or terciles")
        if mode in ("auto", "thresholds"):
            g = {"many": [i for i, c in enumerate(self.counts) if c > many],
                 "medium": [i for i, c in enumerate(self.counts) if few <= c <= many],
                 "few": [i for i, c in enumerate(self.counts) if c < few]}
            if mode == "thresholds" or all(g.values()) or self.num_classes < 3:
                return g
        order = sorted(range(self.num_classes), key=lambda i: (-self.counts[i], i))
        k = self.num_classes
        a, b = round(k / 3), round(2 * k / 3)
        return {"many": sorted(order[:a]), "medium": sorted(order[a:b]), "few": sorted(order[b:])}
