"""Long-tail training methods (the classical baselines) and the weighted real + synthetic loss.

A method returns a *per-sample* loss ``[B]`` (``loss``) and, when it re-weights classes, the per-sample
class weights ``[B]`` its mean is normalised by (``class_weight``); :meth:`LongTailMethod.mean_loss`
reduces both with the per-sample weights (1 for real, omega for synthetic, DiffuLT) through
:func:`weighted_mean`. Class counts are values (``ClassCounts`` or an array).

- ``ce``: plain cross-entropy.
- ``resample``: class-balanced re-sampling (each class drawn equally often; Kang et al., "Decoupling
  Representation and Classifier for Long-Tailed Recognition", ICLR 2020) with plain CE.
- ``balanced_softmax``: Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual Recognition",
  NeurIPS 2020: train on ``logits + tau * log prior`` (tau = ``classifier.la_tau``, 1 in the paper),
  predict with plain logits.
- ``logit_adjust``: the logit-adjusted loss of Menon et al., "Long-tail learning via logit adjustment",
  ICLR 2021, eq. (10): ``CE(f(x) + tau * log pi, y)`` with pi the training label frequencies and tau
  ``classifier.la_tau`` (1 in the paper's experiments); predict with plain logits. Balanced softmax is
  its tau = 1 case, so the two differ only by name and intent.
- ``drw``: deferred re-weighting (Cao et al., "Learning Imbalanced Datasets with Label-Distribution-
  Aware Margin Loss", NeurIPS 2019): CE, then from ``drw_start`` class weights from the effective
  number of samples ``(1 - beta) / (1 - beta^n_c)`` (Cui et al., CVPR 2019), normalised to mean 1.
  The re-weighted loss is the *weighted mean* ``sum_i w_{y_i} l_i / sum_i w_{y_i}``, as
  ``F.cross_entropy(weight=w)`` and the LDAM-DRW code compute it.
- ``ldam_drw``: LDAM (Cao et al. 2019, eq. 13) with DRW. On cosine logits z (a normalised last layer,
  ``NormedLinear``), ``CE(s * (z - Delta_y e_y), y)`` with per-class margins ``Delta_j = C / n_j^{1/4}``,
  C such that the largest margin is ``classifier.ldam_max_margin`` (0.5) and scale s =
  ``classifier.ldam_scale`` (30), as in kaidic/LDAM-DRW; DRW weights as ``drw`` from ``drw_start``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

LDAM_MAX_MARGIN = 0.5   # largest LDAM margin (kaidic/LDAM-DRW cifar_train.py: max_m=0.5)
LDAM_SCALE = 30.0       # LDAM logit scale s on cosine logits (kaidic/LDAM-DRW: s=30)


def weighted_mean(per_sample: Tensor, weights: Tensor | None,
                  class_weight: Tensor | None = None) -> Tensor:  # [B], [B], [B] -> scalar
    """``sum_i omega_i l_i / sum_i v_i``: DiffuLT's ``sum_D CE + omega sum_S CE`` per mini-batch.

    ``weights`` (omega_i: 1 real, omega synthetic) are *not* normalised away, so omega really scales the
    synthetic part. The denominator is the batch size, or, for a class re-weighting method (DRW),
    the sum of the per-sample class weights ``v_i = w_{y_i}`` that ``per_sample`` already carries: with
    omega = 1 that is ``F.cross_entropy(logits, y, weight=w)``.
    """
    if weights is None and class_weight is None:
        return per_sample.mean()
    num = per_sample if weights is None else per_sample * weights.to(per_sample)
    if class_weight is None:
        den = per_sample.new_tensor(float(per_sample.shape[0]))
    else:
        den = class_weight.to(per_sample).sum()
    return num.sum() / den.clamp_min(torch.finfo(per_sample.dtype).tiny)


def effective_number_weights(counts: np.ndarray, beta: float) -> np.ndarray:  # [K] -> [K], mean 1
    """Cui et al. 2019: ``w_c ∝ (1 - beta) / (1 - beta^n_c)``, normalised to sum K (0 for empty classes)."""
    n = np.asarray(counts, dtype=np.float64)
    w = (1.0 - beta) / np.maximum(1.0 - np.power(beta, n), 1e-12)
    w = np.where(n > 0, w, 0.0)
    return w * (len(w) / max(w.sum(), 1e-12))


@dataclass(frozen=True)
class LongTailMethod:
    """Base: plain CE with uniform sampling."""

    counts: np.ndarray          # [K] effective training counts per class (float: synthetic count omega-weighted)
    total_steps: int = 1
    normed_linear: ClassVar[bool] = False   # the model's last layer must be cosine (NormedLinear)

    def sample_weights(self, labels: np.ndarray) -> Tensor | None:  # [N] -> [N] draw weights, or None
        return None

    def class_weight(self, y: Tensor, step: int) -> Tensor | None:  # [B] -> [B] w_{y_i}, or None (uniform)
        return None

    def loss(self, logits: Tensor, y: Tensor, step: int) -> Tensor:  # [B,K], [B] -> [B]
        return F.cross_entropy(logits, y, reduction="none")

    def mean_loss(self, logits: Tensor, y: Tensor, step: int, weights: Tensor | None = None) -> Tensor:
        """The training loss of one batch: :func:`weighted_mean` of ``loss`` by ``weights`` and ``class_weight``."""
        return weighted_mean(self.loss(logits, y, step), weights, self.class_weight(y, step))


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

    def log_prior(self, like: Tensor) -> Tensor:  # [K] log pi_c
        p = np.asarray(self.counts, dtype=np.float64)
        p = np.maximum(p, 1e-12) / max(p.sum(), 1e-12)
        return torch.as_tensor(np.log(p), dtype=like.dtype, device=like.device)

    def loss(self, logits: Tensor, y: Tensor, step: int) -> Tensor:
        return F.cross_entropy(logits + self.tau * self.log_prior(logits), y, reduction="none")


@dataclass(frozen=True)
class LogitAdjusted(BalancedSoftmax):
    """Menon et al. 2021, the logit-adjusted loss: ``CE(f(x) + tau * log pi, y)``."""


@dataclass(frozen=True)
class DeferredReweighting(LongTailMethod):
    start: float = 0.8     # fraction of training after which the class weights switch on
    beta: float = 0.9999   # effective-number beta (Cui et al. 2019; LDAM-DRW default)

    def class_weights(self) -> np.ndarray:  # [K], mean 1
        return effective_number_weights(self.counts, self.beta)

    def class_weight(self, y: Tensor, step: int) -> Tensor | None:
        if step < int(self.start * self.total_steps):
            return None
        return torch.as_tensor(self.class_weights(), device=y.device)[y]

    def base_loss(self, logits: Tensor, y: Tensor) -> Tensor:  # [B]
        return F.cross_entropy(logits, y, reduction="none")

    def loss(self, logits: Tensor, y: Tensor, step: int) -> Tensor:
        """``w_{y_i} l_i`` (``l_i`` before ``start``); :meth:`mean_loss` divides by ``sum_i w_{y_i}``."""
        per = self.base_loss(logits, y)
        w = self.class_weight(y, step)
        return per if w is None else w.to(per) * per


@dataclass(frozen=True)
class LDAMDRW(DeferredReweighting):
    max_margin: float = LDAM_MAX_MARGIN
    scale: float = LDAM_SCALE
    normed_linear: ClassVar[bool] = True

    def margins(self) -> np.ndarray:  # [K] Delta_j = C / n_j^{1/4}, max Delta = max_margin
        n = np.asarray(self.counts, dtype=np.float64)
        m = np.where(n > 0, 1.0 / np.sqrt(np.sqrt(np.maximum(n, 1e-12))), 0.0)
        return m * (self.max_margin / max(m.max(), 1e-12))

    def base_loss(self, logits: Tensor, y: Tensor) -> Tensor:  # logits = cosines [B,K] -> [B]
        delta = torch.as_tensor(self.margins(), dtype=logits.dtype, device=logits.device)[y]
        z = logits - F.one_hot(y, logits.shape[1]).to(logits) * delta[:, None]
        return F.cross_entropy(self.scale * z, y, reduction="none")


METHODS = {
    "ce": CrossEntropy,
    "resample": ClassBalancedResampling,
    "balanced_softmax": BalancedSoftmax,
    "logit_adjust": LogitAdjusted,
    "drw": DeferredReweighting,
    "ldam_drw": LDAMDRW,
}


def make_method(name: str, counts, total_steps: int, *, tau: float = 1.0, drw_start: float = 0.8,
                drw_beta: float = 0.9999, ldam_max_margin: float = LDAM_MAX_MARGIN,
                ldam_scale: float = LDAM_SCALE) -> LongTailMethod:
    """Build the named method over per-class ``counts`` (array-like or ``ClassCounts``)."""
    if name not in METHODS:
        raise ValueError(f"unknown long-tail method {name!r}; choose one of {sorted(METHODS)}")
    c = np.asarray(getattr(counts, "counts", counts), dtype=np.float64)
    if name in ("balanced_softmax", "logit_adjust"):
        return METHODS[name](c, total_steps, tau=tau)
    if name == "drw":
        return DeferredReweighting(c, total_steps, start=drw_start, beta=drw_beta)
    if name == "ldam_drw":
        return LDAMDRW(c, total_steps, start=drw_start, beta=drw_beta, max_margin=ldam_max_margin, scale=ldam_scale)
    return METHODS[name](c, total_steps)
