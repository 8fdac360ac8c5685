"""Pictures that tell the truth: every method on the per-class plot, dropped samples counted on the
ID/AID/OOD plot, labelled and upscaled diffusion grids."""
from __future__ import annotations

import numpy as np
from PIL import Image

from ltaug.diffusion.io import save_grid_png
from ltaug.eval import plots
from ltaug.stages.report import dropped_by_category


def test_per_class_accuracy_shows_every_method(tmp_path):
    rng = np.random.default_rng(0)
    groups = {"many": [0, 1, 2], "medium": [3, 4, 5, 6], "few": [7, 8, 9]}
    methods = {"baseline (ce)": list(rng.uniform(0.3, 1, 10)), "resample": list(rng.uniform(0.3, 1, 10)),
               "balanced_softmax": list(rng.uniform(0.3, 1, 10)), "augmented (drw + synthetic)": list(rng.uniform(0.3, 1, 10))}
    methods["resample"][9] = None
    p = plots.per_class_accuracy(None, str(tmp_path / "pca.png"), groups=groups, methods=methods)
    assert Image.open(p).size[0] > 600
    # the legacy two-method call still works
    plots.per_class_accuracy(methods["augmented (drw + synthetic)"], str(tmp_path / "two.png"), methods["baseline (ce)"], groups)


def test_id_aid_ood_counts_dropped_samples(tmp_path):
    rng = np.random.default_rng(1)
    d = np.concatenate([rng.uniform(0, 1, 40), rng.uniform(1, 2, 20)])
    cat = np.array([0] * 40 + [1] * 20)
    gen = {"manifest": {"categories": {"id": 40, "aid": 20, "ood": 12}}}
    dropped = dropped_by_category(gen, cat)
    assert dropped == {"id": 0, "aid": 0, "ood": 12}
    plots.distance_histogram(d, np.ones(60), cat, str(tmp_path / "idaidood.png"), dropped=dropped)
    kept = np.ones(80, bool)
    d2 = np.concatenate([d, rng.uniform(2, 3.5, 20)])
    cat2 = np.concatenate([cat, [2] * 20])
    kept[60:] = False
    plots.distance_histogram(d2, np.ones(80), cat2, str(tmp_path / "idaidood_kept.png"), kept=kept)


def test_diffusion_grid_is_labelled_and_upscaled(tmp_path):
    imgs = (np.random.default_rng(2).uniform(0, 255, (3 * 4, 16, 16, 1))).astype(np.uint8)
    p = save_grid_png(imgs, str(tmp_path / "grid.png"), nrow=4, scale=2, row_labels=["0 zero", "1 one", "2 two"])
    im = Image.open(p)
    assert im.mode == "RGB" and im.height >= 3 * 64 and im.width > 4 * 64
    p2 = save_grid_png(imgs, str(tmp_path / "grid_default.png"), nrow=4)
    assert Image.open(p2).height >= 3 * 64
