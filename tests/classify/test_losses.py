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


# ------------------------------------------------------------------ published recipes, against independent values


def _effective_number(n, beta):
    """Cui et al. 2019 eq. (3): w_c = (1 - beta) / (1 - beta^n_c), normalised to sum K (LDAM-DRW)."""
    w = [(1 - beta) / (1 - beta ** float(k)) for k in n]
    return np.array(w) * len(w) / sum(w)


def test_drw_is_the_weighted_mean_of_pytorch_and_ldam_drw():
    """After drw_start: sum_i w_{y_i} l_i / sum_i w_{y_i}, i.e. F.cross_entropy(weight=w), not / B."""
    m = make_method("drw", COUNTS, total_steps=10, drw_start=0.5, drw_beta=0.9999)
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(8, 4, generator=g), torch.tensor([0, 0, 0, 1, 1, 2, 3, 0])
    w = torch.tensor(_effective_number(COUNTS, 0.9999), dtype=torch.float32)
    ref = F.cross_entropy(logits, y, weight=w)
    assert m.mean_loss(logits, y, 5).item() == pytest.approx(ref.item(), rel=1e-6)
    assert m.mean_loss(logits, y, 4).item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    # with DiffuLT's per-sample omega on top: sum omega_i w_{y_i} l_i / sum w_{y_i}
    omega = torch.tensor([1, 1, 0.3, 1, 0.3, 1, 0.3, 1.0])
    ce = F.cross_entropy(logits, y, reduction="none")
    assert m.mean_loss(logits, y, 5, omega).item() == pytest.approx(
        float((omega * w[y] * ce).sum() / w[y].sum()), rel=1e-6)


def test_logit_adjust_is_menon_et_al_eq_10():
    """l = -log( exp(z_y + tau log pi_y) / sum_j exp(z_j + tau log pi_j) ), pi = training label frequencies."""
    tau = 1.5
    m = make_method("logit_adjust", COUNTS, 1, tau=tau)
    z = np.array([[0.3, -1.2, 2.0, 0.1], [1.0, 0.0, -0.5, 0.7]])
    y = [2, 3]
    pi = COUNTS / COUNTS.sum()
    ref = []
    for zi, yi in zip(z, y):
        a = zi + tau * np.log(pi)
        ref.append(-(a[yi] - np.log(np.exp(a).sum())))
    got = m.loss(torch.tensor(z), torch.tensor(y), 0).numpy()
    assert np.allclose(got, ref, rtol=1e-10)
    assert m.mean_loss(torch.tensor(z), torch.tensor(y), 0).item() == pytest.approx(np.mean(ref))


def test_ldam_drw_is_cao_et_al_eq_13_with_drw():
    """Delta_j = C / n_j^(1/4), max Delta = 0.5; l = -log( e^{s(z_y - Delta_y)} / (e^{s(z_y - Delta_y)} +
    sum_{j != y} e^{s z_j}) ), s = 30; DRW weights (beta 0.9999) from drw_start, as a weighted mean."""
    m = make_method("ldam_drw", COUNTS, total_steps=10, drw_start=0.8)
    C = 0.5 * COUNTS.min() ** 0.25
    delta = C / COUNTS ** 0.25
    assert np.allclose(m.margins(), delta) and m.margins().max() == pytest.approx(0.5)
    assert m.normed_linear and not make_method("drw", COUNTS, 10).normed_linear
    g = torch.Generator().manual_seed(2)
    z = torch.rand(6, 4, generator=g, dtype=torch.float64) * 2 - 1       # cosines
    y = torch.tensor([0, 1, 2, 3, 3, 0])
    ref = []
    for zi, yi in zip(z.numpy(), y.numpy()):
        t = np.exp(30 * (zi[yi] - delta[yi]))
        ref.append(-np.log(t / (t + sum(np.exp(30 * zi[j]) for j in range(4) if j != yi))))
    ref = np.array(ref)
    assert np.allclose(m.loss(z, y, 0).numpy(), ref, rtol=1e-9)
    assert m.mean_loss(z, y, 7).item() == pytest.approx(ref.mean(), rel=1e-9)      # before drw_start: plain mean
    w = _effective_number(COUNTS, 0.9999)[y.numpy()]
    assert m.mean_loss(z, y, 8).item() == pytest.approx((w * ref).sum() / w.sum(), rel=1e-9)


def test_ldam_margin_and_scale_are_configurable():
    m = make_method("ldam_drw", COUNTS, 10, ldam_max_margin=0.3, ldam_scale=10.0)
    assert m.margins().max() == pytest.approx(0.3) and m.scale == 10.0
    z, y = torch.zeros(1, 4, dtype=torch.float64), torch.tensor([3])
    # all cosines 0: l = -log(e^{-10*0.3} / (e^{-3} + 3))
    assert m.loss(z, y, 0).item() == pytest.approx(-np.log(np.exp(-3.0) / (np.exp(-3.0) + 3)))


def test_config_methods_match_the_registry():
    from ltaug.config.classify import METHODS as CONFIG_METHODS

    assert set(CONFIG_METHODS) == set(METHODS)
