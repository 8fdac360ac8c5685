"""Generative metrics against closed forms and constructed point sets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ltaug.eval import (density_coverage, fid, frechet_distance, generative_report, group_fid, kid,
                        per_class_fid, precision_recall)


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])   # variances
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_general_covariances_commuting_case():
    # S2 = c^2 S1 -> Tr(S1 + S2 - 2 (S1 S2)^1/2) = (1 - c)^2 Tr(S1)
    rng = np.random.RandomState(0)
    a = rng.randn(4, 4)
    s1 = a @ a.T + np.eye(4)
    mu1, mu2 = rng.randn(4), rng.randn(4)
    expected = np.sum((mu1 - mu2) ** 2) + (1 - 3.0) ** 2 * np.trace(s1)
    assert frechet_distance(mu1, s1, mu2, 9.0 * s1) == pytest.approx(expected, rel=1e-6)


def _with_moments(n: int, mu: np.ndarray, cov: np.ndarray, seed: int) -> np.ndarray:
    """Samples whose empirical mean and covariance are exactly ``mu`` and ``cov``."""
    z = np.random.RandomState(seed).randn(n, len(mu))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return z @ np.linalg.cholesky(cov).T + mu


def test_fid_of_two_gaussian_sets_with_known_moments_matches_the_closed_form():
    rot = np.array([[np.cos(0.4), -np.sin(0.4)], [np.sin(0.4), np.cos(0.4)]])
    s1 = rot @ np.diag([1.0, 4.0]) @ rot.T
    mu1, mu2 = np.array([0.0, 1.0]), np.array([3.0, -1.0])
    a, b = _with_moments(300, mu1, s1, 0), _with_moments(500, mu2, 4.0 * s1, 1)
    expected = 13.0 + (1 - 2) ** 2 * 5.0            # |mu1 - mu2|^2 + (1 - c)^2 Tr(S1), S2 = c^2 S1
    assert fid(a, b) == pytest.approx(expected, rel=1e-6)
    # and plain samples converge to it
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 2, generator=g) @ torch.tensor(np.linalg.cholesky(s1).T, dtype=torch.float32) + torch.tensor(mu1, dtype=torch.float32)
    assert fid(x, torch.from_numpy(b)) == pytest.approx(fid(a, b), rel=0.05)


def test_fid_of_a_set_with_itself_is_zero():
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(1))
    assert fid(x, x) == pytest.approx(0.0, abs=1e-6)
    assert fid(x.numpy(), x.numpy()[::-1].copy()) == pytest.approx(0.0, abs=1e-6)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g)
    c = torch.randn(400, 8, generator=g) + 1.0
    same, _ = kid(a, b, subsets=20, subset_size=200, generator=torch.Generator().manual_seed(0))
    diff, _ = kid(a, c, subsets=20, subset_size=200, generator=torch.Generator().manual_seed(0))
    assert abs(same) < 0.05 and diff > 10 * max(abs(same), 1e-3)


# 1-D constructed sets (see the comments for the hand computation), k = 1
REAL = np.arange(10, dtype=np.float64)[:, None]         # 0..9, every k-NN radius = 1
FAKE = np.array([0.5, 3.2, 100.0, 101.0])[:, None]


def test_precision_recall_on_constructed_points():
    # precision: 0.5 and 3.2 lie in real balls, 100 and 101 do not -> 2/4
    # fake radii (k=1): 0.5 -> 2.7, 3.2 -> 2.7, 100 -> 1, 101 -> 1; balls cover real 0..5 -> recall 6/10
    assert precision_recall(REAL, FAKE, k=1) == pytest.approx({"precision": 0.5, "recall": 0.6})


def test_density_coverage_on_constructed_points():
    # 0.5 is inside the balls of 0 and 1, 3.2 inside those of 3 and 4 -> density (2 + 2) / (1 * 4) = 1
    # real balls holding a fake: 0, 1, 3, 4 -> coverage 4/10
    assert density_coverage(REAL, FAKE, k=1) == pytest.approx({"density": 1.0, "coverage": 0.4})
    # identical sets: every ball holds its own point
    assert density_coverage(REAL, REAL, k=2)["coverage"] == 1.0


def test_per_class_and_group_fid():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 3, generator=g)
    ry = torch.arange(300) % 3
    fake = real.clone()
    fake[ry == 2] += 5.0                                # only class 2 is off
    fy = ry.clone()
    pc = per_class_fid(real, ry, fake, fy, num_classes=4)
    assert pc[0] == pytest.approx(0, abs=1e-6) and pc[1] == pytest.approx(0, abs=1e-6)
    assert pc[2] == pytest.approx(75.0, rel=1e-6) and pc[3] is None     # 3 dims x 5^2; class 3 empty
    assert group_fid(real, ry, fake, fy, [0, 1]) == pytest.approx(0, abs=1e-6)
    assert group_fid(real, ry, fake, fy, [2]) == pytest.approx(75.0, rel=1e-6)
    rep = generative_report(real, ry, fake, fy, 4, {"many": [0], "medium": [1], "few": [2]}, k=3, kid_subsets=2,
                            kid_subset_size=50, generator=torch.Generator().manual_seed(0))
    assert rep["fid_few"] == pytest.approx(75.0, rel=1e-6) and rep["fid_many"] == pytest.approx(0, abs=1e-6)
    assert {"fid", "kid", "precision", "recall", "density", "coverage", "mean_class_fid"} <= set(rep)
