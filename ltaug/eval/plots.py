"""PNG plots for people and MLflow artifacts (matplotlib, Agg backend; each function writes one file
and returns its path)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

GRID_BACKGROUND = 96  # gray gaps between grid cells
CATEGORY_COLORS = {"id": "tab:green", "aid": "tab:orange", "ood": "tab:red"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


GROUP_COLORS = {"many": "#eef", "medium": "#efe", "few": "#fee"}


def _shade_groups(ax, groups: Mapping[str, Sequence[int]] | None) -> None:
    """Shade each class's column by its many / medium / few group (one legend entry per group)."""
    for g, cls in (groups or {}).items():
        for i, c in enumerate(cls):
            ax.axvspan(c - 0.5, c + 0.5, color=GROUP_COLORS.get(g, "#eee"), lw=0, zorder=0,
                       label=f"{g} ({len(cls)})" if i == 0 else None)


def class_histogram(real_counts: Sequence[int], path: str, synthetic_counts: Sequence[int] | None = None,
                    class_names: Sequence[str] = (), title: str = "images per class",
                    groups: Mapping[str, Sequence[int]] | None = None, log_scale: bool = False) -> str:
    """Bars of real counts per class, with the synthetic counts stacked on top (before / after augmentation);
    columns shaded by group when ``groups`` is given; a log y-axis for steep profiles."""
    plt = _plt()
    real = np.asarray(real_counts)
    k = np.arange(len(real))
    fig, ax = plt.subplots(figsize=(max(5.0, min(0.35 * len(real), 18)), 3.5))
    _shade_groups(ax, groups)
    ax.bar(k, real, color="tab:blue", label="real")
    if synthetic_counts is not None:
        ax.bar(k, np.asarray(synthetic_counts), bottom=real, color="tab:orange", label="synthetic")
    if synthetic_counts is not None or groups:
        ax.legend(fontsize=7)
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    ax.set_title(title)
    if len(real) <= 30:
        ax.set_xticks(k, list(class_names) if class_names else [str(i) for i in k],
                      rotation=90 if class_names and len(real) > 12 else 0)
    return _save(fig, path)


def per_class_accuracy(accuracy: Sequence[float | None], path: str, baseline: Sequence[float | None] | None = None,
                       groups: Mapping[str, Sequence[int]] | None = None, title: str = "per-class top-1") -> str:
    """Per-class accuracy (augmented) beside the baseline's; group boundaries shaded by many/medium/few."""
    plt = _plt()
    acc = np.array([np.nan if a is None else a for a in accuracy], dtype=float)
    k = np.arange(len(acc))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(acc)), 3.5))
    _shade_groups(ax, groups)
    w = 0.4 if baseline is not None else 0.8
    if baseline is not None:
        base = np.array([np.nan if a is None else a for a in baseline], dtype=float)
        ax.bar(k - w / 2, base, width=w, color="tab:gray", label="baseline")
        ax.bar(k + w / 2, acc, width=w, color="tab:blue", label="augmented")
        ax.legend(fontsize=7)
    else:
        ax.bar(k, acc, width=w, color="tab:blue")
        if groups:
            ax.legend(fontsize=7)
    ax.set_ylim(0, 1)
    if len(acc) <= 30:
        ax.set_xticks(k)
    ax.set_xlabel("class")
    ax.set_ylabel("top-1")
    ax.set_title(title)
    return _save(fig, path)


def confusion_matrix_plot(cm: Sequence[Sequence[int]], path: str, title: str = "confusion matrix") -> str:
    """Row-normalised confusion matrix (rows = true class)."""
    plt = _plt()
    m = np.asarray(cm, dtype=float)
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, path)


def grid_image(images: np.ndarray, labels: Sequence[int], num_classes: int, per_class: int = 8,
               pad: int = 1) -> np.ndarray:
    """uint8 mosaic ``[K*(H+pad), per_class*(W+pad), C]``: one row per class (gaps and empty cells gray)."""
    labels = np.asarray(labels, dtype=np.int64)
    H, W, C = images.shape[1:] if len(images) else (1, 1, 1)
    out = np.full((num_classes * (H + pad), per_class * (W + pad), C), GRID_BACKGROUND, np.uint8)
    for c in range(num_classes):
        for j, i in enumerate(np.where(labels == c)[0][:per_class]):
            out[c * (H + pad):c * (H + pad) + H, j * (W + pad):j * (W + pad) + W] = images[i]
    return out


def sample_grid(images: np.ndarray, labels: Sequence[int], path: str, num_classes: int | None = None,
                per_class: int = 8, title: str = "") -> str:
    """One row per class, up to ``per_class`` images each (uint8 ``[N,H,W,C]``), as one mosaic."""
    plt = _plt()
    labels = np.asarray(labels, dtype=np.int64)
    K = num_classes if num_classes is not None else (int(labels.max()) + 1 if len(labels) else 1)
    mosaic = grid_image(images, labels, K, per_class)
    H = mosaic.shape[0] / K
    fig, ax = plt.subplots(figsize=(max(2.5, per_class * 0.5), max(2.0, K * 0.5)))
    ax.imshow(mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic, cmap="gray", vmin=0, vmax=255,
              interpolation="nearest")
    ax.set_yticks(np.arange(K) * H + H / 2, [str(c) for c in range(K)], fontsize=7)
    ax.set_xticks([])
    ax.set_ylabel("class")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def distance_histogram(distances: Sequence[float], radii: Sequence[float], categories: Sequence[int], path: str,
                       title: str = "distance to class centre / d_f") -> str:
    """Histogram of ``d / d_f(y)`` coloured by ID / AID / OOD, with the thresholds 1 and 2 marked."""
    plt = _plt()
    d = np.asarray(distances, float) / np.maximum(np.asarray(radii, float), 1e-12)
    cat = np.asarray(categories, np.int64)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    finite = d[np.isfinite(d)]
    hi = float(max(3.0, np.quantile(finite, 0.99))) if len(finite) else 3.0
    bins = np.linspace(0, hi, 40)
    for i, (name, color) in enumerate(CATEGORY_COLORS.items()):
        sel = np.clip(d[cat == i], 0, hi)
        ax.hist(sel, bins=bins, color=color, alpha=0.8, label=f"{name.upper()} ({len(sel)})")
    for t in (1.0, 2.0):
        ax.axvline(t, color="k", ls="--", lw=0.8)
    ax.set_xlabel("d / d_f")
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)
