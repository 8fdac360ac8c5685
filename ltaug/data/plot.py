"""Class-count histograms (PNG): one or more series side by side (e.g. real vs real + synthetic)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def plot_class_histogram(series: Mapping[str, Sequence[int]], path: str, title: str = "images per class",
                         groups: Mapping[str, Sequence[int]] | None = None, log_scale: bool = False) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(series)
    k = len(next(iter(series.values())))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(6, min(0.25 * k + 3, 18)), 3.6))
    x = np.arange(k)
    for i, name in enumerate(names):
        ax.bar(x + (i - (len(names) - 1) / 2) * width, series[name], width, label=name)
    if groups:
        colors = {"many": "#d8f0d8", "medium": "#f7efd2", "few": "#f6d8d8"}
        for g, cls in groups.items():
            for c in cls:
                ax.axvspan(c - 0.5, c + 0.5, color=colors.get(g, "#eee"), zorder=0, lw=0)
        ax.plot([], [], " ", label="bands: " + " / ".join(f"{g} {len(v)}" for g, v in groups.items()))
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    if log_scale:
        ax.set_yscale("log")
    ax.set_title(title)
    if k <= 30:
        ax.set_xticks(x)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
