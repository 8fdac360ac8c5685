"""Accuracy splits (group boundaries), confusion matrix, ID/AID/OOD shares, plots write PNGs."""
from __future__ import annotations

import numpy as np
import pytest

from ltaug.data import ClassCounts
from ltaug.eval import accuracy_report, confusion_matrix, id_aid_ood_shares
from ltaug.eval import plots


def test_group_boundaries_and_group_accuracy():
    # many: > 100 train images, medium: 20..100, few: < 20
    counts = ClassCounts((101, 100, 20, 19, 500))
    groups = counts.groups("thresholds")
    assert groups == {"many": [0, 4], "medium": [1, 2], "few": [3]}
    y = np.repeat(np.arange(5), 10)
    pred = y.copy()
    pred[y == 3] = 0                                 # the few class is always wrong
    pred[np.where(y == 2)[0][:5]] = 4                # half of class 2 wrong
    rep = accuracy_report(y, pred, 5, groups)
    assert rep["acc_many"] == 1.0 and rep["acc_medium"] == 0.75 and rep["acc_few"] == 0.0
    assert rep["acc_all"] == pytest.approx(35 / 50)
    assert rep["per_class"] == [1.0, 1.0, 0.5, 0.0, 1.0]
    cm = np.asarray(rep["confusion"])
    assert cm[3, 0] == 10 and cm[2, 4] == 5 and cm.sum() == 50
    assert accuracy_report(y, pred, 5, {"many": [0], "medium": [], "few": []})["acc_medium"] is None


def test_confusion_matrix_rows_are_true_classes():
    assert confusion_matrix(np.array([0, 0, 1]), np.array([1, 0, 1]), 2).tolist() == [[1, 1], [0, 1]]


def test_id_aid_ood_shares():
    assert id_aid_ood_shares(np.array([0, 0, 1, 2])) == {"id": 0.5, "aid": 0.25, "ood": 0.25}


def test_plots_write_pngs(tmp_path):
    rng = np.random.RandomState(0)
    out = [
        plots.class_histogram([50, 20, 5], str(tmp_path / "h.png"), [0, 30, 45], ("a", "b", "c")),
        plots.class_histogram([500, 20, 5], str(tmp_path / "hg.png"), groups={"many": [0], "medium": [1], "few": [2]},
                              log_scale=True),
        plots.per_class_accuracy([0.9, 0.5, None], str(tmp_path / "a.png"), [0.9, 0.3, 0.1],
                                 {"many": [0], "medium": [1], "few": [2]}),
        plots.confusion_matrix_plot([[3, 1], [0, 4]], str(tmp_path / "c.png")),
        plots.sample_grid(rng.randint(0, 255, (12, 8, 8, 1)).astype(np.uint8), np.arange(12) % 3,
                          str(tmp_path / "g.png"), 3, per_class=4),
        plots.distance_histogram(rng.rand(50) * 3, np.ones(50), (rng.rand(50) * 3).astype(int), str(tmp_path / "d.png")),
    ]
    for p in out:
        with open(p, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_grid_image_puts_each_class_on_its_row():
    imgs = np.stack([np.full((2, 2, 1), 10 * (i + 1), np.uint8) for i in range(5)])
    g = plots.grid_image(imgs, [0, 1, 1, 2, 0], num_classes=3, per_class=2, pad=1)
    assert g.shape == (9, 6, 1)
    assert g[0, 0, 0] == 10 and g[0, 3, 0] == 50 and g[3, 0, 0] == 20 and g[3, 3, 0] == 30
    assert g[6, 3, 0] == plots.GRID_BACKGROUND    # class 2 has one image only
