"""CCUA batch re-sampling (BRS, "negative-sample enhancement"; Chen et al. arXiv 2507.09052, algorithms.md §3.4).

CCUA-DDPM ``dataset.py::brs`` (and CCUA-SiT ``lt_dataset.py::brs``) remaps every dataset index
``i in [0, N)`` before loading: the index range is cut into contiguous bins of sizes
``n'_c = floor(N p_c / sum p)`` with the softer exponential profile ``p_c = rho_b^(c/(C-1))``; the bin that
holds ``i`` names a class (an index on a boundary goes to the later bin, the ``N - sum n'_c`` indices past
the last boundary to the last class) and a uniformly random training image of that class is returned.
With a shuffled epoch, class c then fills ``n'_c`` of the epoch's N draws: the sampled imbalance is
``1/rho_b`` (10 with CCUA's ``--brs_factor 0.1``) whatever the data's, so batches hold more tail samples,
hence more tail negatives for the InfoNCE.

The code takes class index c as the head-to-tail rank (true of its CIFAR/ImageNet-LT constructions, class 0 the
head). Here c is the rank of the class by training count (descending, ties by class id), which is the same
order on those datasets and stays meaningful for any class order; classes without images are left out.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

BRS_FACTOR = 0.1  # rho_b: CCUA-DDPM main.py --brs_factor default; the TinyImageNet-LT / SiT ImageNet-LT scripts


class BatchResampler:
    """``resampler(idx [B] dataset indices, step) -> [B] re-sampled dataset indices``; a pure function of
    ``(labels, rho_b, seed, idx, step)``, so every worker computes the same global batch."""

    def __init__(self, labels: np.ndarray | Tensor, factor: float = BRS_FACTOR, seed: int = 0) -> None:
        y = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1)
        if not 0 < factor <= 1:
            raise ValueError(f"loss.brs_factor={factor} must be in (0, 1]")
        self.N, self.factor, self.seed = int(y.numel()), float(factor), int(seed)
        counts = torch.bincount(y)
        present = [c for c in range(len(counts)) if counts[c] > 0]
        self.ranked = torch.tensor(sorted(present, key=lambda c: (-int(counts[c]), c)), dtype=torch.long)  # head first
        C = len(present)
        p = [self.factor ** (r / (C - 1)) if C > 1 else 1.0 for r in range(C)]
        self.bin_sizes = torch.tensor([int(np.floor(self.N * pr / sum(p))) for pr in p], dtype=torch.long)
        self.starts = torch.cumsum(self.bin_sizes, 0) - self.bin_sizes   # [C] first index of each rank's bin
        self.order = torch.argsort(y, stable=True)                       # dataset indices grouped by class
        self.offset = torch.cumsum(counts, 0) - counts                   # [num_classes] start of class c in order
        self.counts = counts

    def class_of(self, idx: Tensor) -> Tensor:
        """The class an index maps to: the last bin whose start is <= i (the code's boundary and tail rules)."""
        r = torch.searchsorted(self.starts, idx.long(), right=True) - 1
        return self.ranked[r.clamp(min=0)]

    def __call__(self, idx: Tensor, step: int) -> Tensor:
        c = self.class_of(idx)
        g = torch.Generator().manual_seed((self.seed * 2_654_435_761 + step * 40_503 + 97) % (2**63 - 1))
        u = torch.rand(idx.shape[0], generator=g, dtype=torch.float64)
        n = self.counts[c]
        j = (u * n).long().clamp(max=n - 1)
        return self.order[self.offset[c] + j]

    def expected_counts(self) -> dict[int, int]:
        """Draws of each class per epoch of N indices (the bins; the remainder goes to the last class)."""
        out = {int(c): int(s) for c, s in zip(self.ranked, self.bin_sizes)}
        out[int(self.ranked[-1])] += self.N - int(self.bin_sizes.sum())
        return out


class ResampledBatches:
    """A :class:`~ltaug.train.StepBatches` whose global batch goes through a :class:`BatchResampler`
    before it is split across ranks (``indices(step)`` is this rank's slice)."""

    def __init__(self, batches, resampler: BatchResampler) -> None:
        self.batches, self.resampler = batches, resampler

    def global_indices(self, step: int) -> Tensor:
        return self.resampler(self.batches.global_indices(step), step)

    def indices(self, step: int) -> Tensor:
        b = self.batches
        return self.global_indices(step)[b.rank::b.world_size]

    def epoch_of(self, step: int) -> float:
        return self.batches.epoch_of(step)


__all__ = ["BatchResampler", "ResampledBatches", "BRS_FACTOR"]
