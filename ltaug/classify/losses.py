"""Long-tail training methods (the classical baselines) and the weighted real + synthetic loss.

A method returns a *per-sample* loss ``[B]``; :func:`weighted_mean` applies the per-sample weights
(1 for real, omega for synthetic, DiffuLT) and reduces. Class counts are values (``ClassCounts``).

- ``ce``: plain cross-entropy.
- ``resample``: class-balanced re-sampling (each class drawn equally often; Kang et al., "Decoupling
  Representation and Classifier for Long-Tailed Recognition", ICLR 2020) with plain CE.
- ``balanced_softmax``: Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual Recognition",
  NeurIPS 2020 = logit adjustment with tau = 1 (Menon et al., "Long-tail learning via logit
  adjustment", ICLR 2021): train on ``logits + tau * log prior``, predict with plain logits.
- ``drw``: deferred re-weighting (Cao et al., "Learning Imbalanced Datasets with Label-Distribution-
  Aware Margin Loss", NeurIPS 2019): CE, then from ``drw_start`` class weights from the effective
  number of samples ``(1 - beta) / (1 - beta^n_c)`` (Cui et al., CVPR 2019), normalised to mean 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def weighted_mean(per_sample: Tensor, weights: Tensor | None) -> Tensor:  # [B], [B] -> scalar
    """``(1/B) sum_i w_i l_i``: DiffuLT's ``sum_D CE + omega sum_S CE`` per mini-batch.

    Normalised by the batch size, not by ``sum w``, so omega really scales the synthetic part.
    """
    if weights is None:
        return per_sample.mean()
    return (per_sample * weights.to(per_sample)).sum() / per_sample.shape[0]


@dataclass(frozen=True)
class LongTailMethod:
    """Base: plain CE with uniform sampling."""

    counts: np.ndarray          # [K] effective training counts per class (float: synthetic count omega-weighted)
    total_steps: int = 1

    def sample_weights(self, labels: np.ndarray) -> Tensor | None:  # [N] -> [N] draw weights, or None
        return None

    def loss(self, logits: Tensor, y: Tensor, step: int) -> Tensor:  # [B,K], [B] -> [B]
        return F.cross_entropy(logits, y, reduction="none")


@dataclass(frozen=True)
class CrossEntropy(LongTailMethod):
    pass


@dataclass(frozen=True)
class ClassBalancedResampling(LongTailMethod):
    def sample_weights(self, labels: np.ndarray) -> Tensor:
        """``1 / n_c`` with n_c counted in the pool drawn from (real + synthetic): classes equally likely."""
        labels = np.asarray(labels, dtype=np.int64)
        n = np.bincount(labels, minlength=len(self.counts)).astype(np.float64)
        return torch.from_numpy(1.0 / np.maximum(n, 1.0)[labels])


@dataclass(frozen=True)
class BalancedSoftmax(LongTailMethod):
    tau: float = 1.0

    def log_prior(self, like: Tensor) -> Tensor:  # [K]
        p = np.asarray(self.counts, dtype=np.float64)
        p = np.maximum(p, 1e-12) / max(p.sum(), 1e-12)
        return torch.as_tensor(np.log(p), dtype=like.dtype, device=like.device)

    def loss(self, logits: Tensor, y: Tensor, step: int) -> Tensor:
        return F.cross_entropy(logits + self.tau * self.log_prior(logits), y, reduction="none")


@dataclass(frozen=True)
class DeferredReweighting(LongTailMethod):
    start: float = 0.8     # fraction of training after which the class weights switch on
    beta: float = 0.9999   # effective-number beta (Cui et al. 2019; LDAM-DRW default)

    def class_weights(self) -> np.ndarray:  # [K], mean 1
        n = np.asarray(self.counts, dtype=np.float64)
        w = (1.0 - self.beta) / np.maximum(1.0 - np.power(self.beta, n), 1e-12)
        w = np.where(n > 0, w, 0.0)
        return w * (len(w) / max(w.sum(), 1e-12))

    def loss(self, logits: Tensor, y: Tensor, step: int) -> Tensor:
        ce = F.cross_entropy(logits, y, reduction="none")
        if step < int(self.start * self.total_steps):
            return ce
        w = torch.as_tensor(self.class_weights(), dtype=ce.dtype, device=ce.device)
        return w[y] * ce


METHODS = {
    "ce": CrossEntropy,
    "resample": ClassBalancedResampling,
    "balanced_softmax": BalancedSoftmax,
    "drw": DeferredReweighting,
}


def make_method(name: str, counts, total_steps: int, *, tau: float = 1.0, drw_start: float = 0.8,
                drw_beta: float = 0.9999) -> LongTailMethod:
    """Build the named method over per-class ``counts`` (array-like or ``ClassCounts``)."""
    if name not in METHODS:
        raise ValueError(f"unknown long-tail method {name!r}; choose one of {sorted(METHODS)}")
    c = np.asarray(getattr(counts, "counts", counts), dtype=np.float64)
    if name == "balanced_softmax":
        return BalancedSoftmax(c, total_steps, tau=tau)
    if name == "drw":
        return DeferredReweighting(c, total_steps, start=drw_start, beta=drw_beta)
    return METHODS[name](c, total_steps)
