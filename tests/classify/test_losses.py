"""Long-tail methods (registry contract) and the weighted real + synthetic loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltaug.classify import METHODS, make_method, weighted_mean
from ltaug.classify.losses import BalancedSoftmax, DeferredReweighting

COUNTS = np.array([100, 30, 10, 3])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_returns_a_finite_per_sample_loss(name):
    m = make_method(name, COUNTS, total_steps=10)
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 3, 0, 1])
    for step in (0, 9):
        loss = m.loss(logits, y, step)
        assert loss.shape == (6,) and torch.isfinite(loss).all()
    w = m.sample_weights(np.array([0, 0, 1, 3]))
    assert w is None or w.shape == (4,)


def test_synthetic_weight_scales_the_loss():
    per_sample = torch.tensor([1.0, 2.0, 3.0, 4.0])
    real = torch.tensor([1.0, 1.0, 1.0, 1.0])
    assert weighted_mean(per_sample, real) == pytest.approx(2.5)
    assert weighted_mean(per_sample, None) == pytest.approx(2.5)
    # all synthetic: exactly omega times the plain mean (not re-normalised away)
    for omega in (0.0, 0.3, 0.5):
        assert weighted_mean(per_sample, torch.full((4,), omega)) == pytest.approx(omega * 2.5)
    # DiffuLT: (sum_D CE + omega sum_S CE) / B
    mixed = torch.tensor([1.0, 1.0, 0.3, 0.3])
    assert weighted_mean(per_sample, mixed) == pytest.approx((1 + 2 + 0.3 * 3 + 0.3 * 4) / 4)


def test_balanced_softmax_adds_the_log_prior():
    m = make_method("balanced_softmax", COUNTS, 1)
    assert isinstance(m, BalancedSoftmax)
    logits, y = torch.zeros(1, 4), torch.tensor([3])
    prior = COUNTS / COUNTS.sum()
    assert m.loss(logits, y, 0).item() == pytest.approx(-np.log(prior[3]), rel=1e-5)
    assert make_method("balanced_softmax", COUNTS, 1, tau=0.0).loss(logits, y, 0).item() == pytest.approx(np.log(4))


def test_drw_switches_on_effective_number_weights():
    m = make_method("drw", COUNTS, total_steps=10, drw_start=0.5, drw_beta=0.999)
    assert isinstance(m, DeferredReweighting)
    w = m.class_weights()
    assert w.mean() == pytest.approx(1.0) and np.all(np.diff(w) > 0)  # rarer class, larger weight
    logits, y = torch.randn(4, 4), torch.arange(4)
    ce = F.cross_entropy(logits, y, reduction="none")
    assert torch.allclose(m.loss(logits, y, 4), ce)
    assert torch.allclose(m.loss(logits, y, 5), ce * torch.tensor(w, dtype=ce.dtype))


def test_resample_draws_classes_equally_often():
    labels = np.repeat(np.arange(4), COUNTS)
    w = make_method("resample", COUNTS, 1).sample_weights(labels)
    per_class = np.bincount(labels, weights=w.numpy())
    assert np.allclose(per_class, per_class[0])


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError, match="balanced_softmax"):
        make_method("focal", COUNTS, 1)


def test_classifier_tests_run_single_threaded():
    """The root conftest pins the small CPU-bound test folders to one intra-op thread."""
    assert torch.get_num_threads() == 1
