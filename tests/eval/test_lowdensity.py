"""AvgkNN, LOF (against scikit-learn and against Breunig's formula), Rarity Score."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import LocalOutlierFactor

from ltaug.eval import avg_knn, lof, low_density_report, rarity_score

REAL = np.arange(10, dtype=np.float64)[:, None]
FAKE = np.array([0.5, 3.2, 100.0, 101.0])[:, None]


def _lof_reference(real: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Breunig et al. 2000, written out: reach-dist, local reachability density, LOF."""
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=-1)
    np.fill_diagonal(d_rr, np.inf)
    nn_r = np.argsort(d_rr, axis=1)[:, :k]
    kdist = np.sort(d_rr, axis=1)[:, k - 1]
    lrd_r = 1.0 / (np.maximum(kdist[nn_r], np.take_along_axis(d_rr, nn_r, 1)).mean(1) + 1e-10)
    d_qr = np.linalg.norm(q[:, None] - real[None], axis=-1)
    nn_q = np.argsort(d_qr, axis=1)[:, :k]
    lrd_q = 1.0 / (np.maximum(kdist[nn_q], np.take_along_axis(d_qr, nn_q, 1)).mean(1) + 1e-10)
    return lrd_r[nn_q].mean(1) / lrd_q


def test_lof_matches_scikit_learn_and_the_formula():
    rng = np.random.RandomState(0)
    real = rng.randn(200, 3)
    fake = np.concatenate([rng.randn(20, 3), rng.randn(5, 3) * 0.1 + 6.0])
    ours = lof(real, fake, k=7)
    direct = -LocalOutlierFactor(n_neighbors=7, novelty=True).fit(real).score_samples(fake)
    assert np.allclose(ours, direct)
    assert np.allclose(ours, _lof_reference(real, fake, 7), rtol=1e-6)
    assert ours[:20].mean() < 1.5 and ours[20:].min() > 3.0       # outliers stand out


def test_avg_knn_on_constructed_points():
    # 0.5: nearest reals 0 and 1 at 0.5 each; 100: 9 and 8 at 91 and 92
    assert np.allclose(avg_knn(REAL, FAKE, k=2), [0.5, (0.2 + 0.8) / 2, 91.5, 92.5])


def test_rarity_score_on_constructed_points():
    # balls of radius 1 (k=1) except the ends... 0..9 all have nn distance 1
    r = rarity_score(REAL, FAKE, k=1)
    assert r[0] == pytest.approx(1.0) and r[1] == pytest.approx(1.0) and np.isnan(r[2:]).all()
    real = np.array([0.0, 1.0, 10.0, 14.0])[:, None]     # radii (k=1): 1, 1, 4, 4
    s = rarity_score(real, np.array([[0.5], [11.0], [13.0], [50.0]]), k=1)
    assert s[:3].tolist() == [1.0, 4.0, 4.0] and np.isnan(s[3])
    rep = low_density_report(REAL, FAKE, k=1)
    assert rep["rarity_on_manifold"] == 0.5 and rep["rarity"] == pytest.approx(1.0)
