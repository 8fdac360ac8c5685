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


METHOD_COLORS = ("tab:gray", "tab:purple", "tab:brown", "tab:olive", "tab:cyan", "tab:pink", "tab:red")
GROUP_ORDER = ("many", "medium", "few")


def _as_float(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if a is None else a for a in values], dtype=float)


def per_class_accuracy(accuracy: Sequence[float | None] | None, path: str,
                       baseline: Sequence[float | None] | None = None,
                       groups: Mapping[str, Sequence[int]] | None = None, title: str = "per-class top-1",
                       methods: Mapping[str, Sequence[float | None]] | None = None) -> str:
    """Per-class top-1 of every method side by side (``methods``: name -> per-class accuracy, in legend order;
    without it ``baseline`` and ``accuracy`` as "baseline" / "augmented"); columns shaded by many / medium /
    few, each group's mean per method marked as a dashed line over the group and listed in a table below;
    the legend sits outside the axes so it never hides the few classes."""
    plt = _plt()
    if methods is None:
        methods = {**({"baseline": baseline} if baseline is not None else {}),
                   **({"augmented" if baseline is not None else "top-1": accuracy} if accuracy is not None else {})}
    names = list(methods)
    accs = [_as_float(methods[n]) for n in names]
    K = len(accs[0]) if accs else 0
    k = np.arange(K)
    colors = {n: ("tab:blue" if n.startswith("augmented") or len(names) == 1 else
                  METHOD_COLORS[i % len(METHOD_COLORS)]) for i, n in enumerate(names)}
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.12 * K * max(1, len(names)) + 3.5), 22), 4.2))
    _shade_groups(ax, groups)
    w = 0.8 / max(1, len(names))
    for i, (n, a) in enumerate(zip(names, accs)):
        ax.bar(k - 0.4 + w * (i + 0.5), a, width=w, color=colors[n], label=n)
    means: dict[str, list[str]] = {n: [] for n in names}
    for g in [g for g in GROUP_ORDER if g in (groups or {})] + [g for g in (groups or {}) if g not in GROUP_ORDER]:
        cls = list((groups or {})[g])
        if not cls:
            continue
        for n, a in zip(names, accs):
            m = float(np.nanmean(a[cls])) if np.isfinite(a[cls]).any() else float("nan")
            ax.hlines(m, min(cls) - 0.45, max(cls) + 0.45, colors=colors[n], linestyles="--", lw=1.2, zorder=3)
            means[n].append(f"{g} {'–' if not np.isfinite(m) else f'{100 * m:.1f}'}")
    for bar_label, n in zip(ax.containers, names):   # group means in the legend: "name — many 52.1  few 81.5"
        if means[n]:
            bar_label.set_label(f"{n}\n   " + "  ".join(means[n]))
    ax.set_ylim(0, 1.05)
    ax.set_xlim(-0.6, K - 0.4)
    if K <= 40:
        ax.set_xticks(k)
        ax.tick_params(axis="x", labelsize=7 if K > 20 else 9)
    ax.set_xlabel("class   (dashed lines: group mean of each method; means in % in the legend)")
    ax.set_ylabel("top-1")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
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


def kept_dropped_grid(kept: np.ndarray, kept_labels: Sequence[int], dropped: np.ndarray, dropped_labels: Sequence[int],
                      path: str, num_classes: int, class_names: Sequence[str] = (), per_class: int = 8,
                      title: str = "", totals: tuple[Sequence[int], Sequence[int]] | None = None) -> str:
    """What generation made, per class: kept samples (left) beside dropped ones (right), rows labelled by class
    name and the class's total kept / dropped (``totals``, else the counts of the images given); empty cells gray."""
    plt = _plt()
    K = num_classes
    names = [class_names[c] if c < len(class_names) else str(c) for c in range(K)]
    kl, dl = np.asarray(kept_labels, np.int64), np.asarray(dropped_labels, np.int64)
    shape = kept.shape[1:] if len(kept) else dropped.shape[1:] if len(dropped) else (1, 1, 1)
    empty = np.zeros((0, *shape), np.uint8)
    tk, td = totals if totals is not None else (np.bincount(kl, minlength=K), np.bincount(dl, minlength=K))
    panels = [(grid_image(kept if len(kept) else empty, kl, K, per_class), "kept", tk),
              (grid_image(dropped if len(dropped) else empty, dl, K, max(1, per_class // 2)), "dropped (filter)", td)]
    fig, axes = plt.subplots(1, 2, figsize=(max(4.0, per_class * 0.75), max(2.2, K * 0.45)),
                             gridspec_kw={"width_ratios": [per_class, max(1, per_class // 2)]})
    for ax, (mosaic, what, total) in zip(axes, panels):
        H = mosaic.shape[0] / K
        ax.imshow(mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic, cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_yticks(np.arange(K) * H + H / 2, [f"{names[c]} ({int(total[c])})" for c in range(K)], fontsize=7)
        ax.set_xticks([])
        ax.set_title(what, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def distance_histogram(distances: Sequence[float], radii: Sequence[float], categories: Sequence[int], path: str,
                       title: str = "distance to class centre / d_f",
                       dropped: Mapping[str, int] | None = None, kept: Sequence[bool] | None = None) -> str:
    """Histogram of ``d / d_f(y)`` of *all* scored samples coloured by ID / AID / OOD, the thresholds 1 and 2
    marked. ``kept`` (per sample) hatches what the filter drops and counts it in the legend; ``dropped``
    (category -> count) adds samples whose distances are not at hand (dropped before they were stored) to the
    legend counts, so a filtered category never reads as 0."""
    plt = _plt()
    d = np.asarray(distances, float) / np.maximum(np.asarray(radii, float), 1e-12)
    cat = np.asarray(categories, np.int64)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    finite = d[np.isfinite(d)]
    hi = float(max(3.0, np.quantile(finite, 0.99))) if len(finite) else 3.0
    bins = np.linspace(0, hi, 40)
    keep = np.ones(len(d), bool) if kept is None else np.asarray(kept, bool)
    extra = dict(dropped or {})
    for i, (name, color) in enumerate(CATEGORY_COLORS.items()):
        n_drop = int((~keep[cat == i]).sum()) + int(extra.get(name, 0))
        n_all = int((cat == i).sum()) + int(extra.get(name, 0))
        label = f"{name.upper()} ({n_all}" + (f", {n_drop} dropped)" if n_drop else ")")
        ax.hist(np.clip(d[(cat == i) & keep], 0, hi), bins=bins, color=color, alpha=0.8, label=label)
        if (~keep[cat == i]).any():
            ax.hist(np.clip(d[(cat == i) & ~keep], 0, hi), bins=bins, color=color, alpha=0.35, hatch="//",
                    edgecolor="k", lw=0.3)
    n_extra = sum(int(v) for v in extra.values())
    for t in (1.0, 2.0):
        ax.axvline(t, color="k", ls="--", lw=0.8)
    ax.set_xlabel("d / d_f" + (f"   ({n_extra} dropped by the filter: counted, distances not stored)"
                                if n_extra else ""), fontsize=9 if n_extra else None)
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def minority_gate_plot(gate: Mapping, path: str, title: str = "minority guidance: quality gate (validation)") -> str:
    """Left: the low-density metrics relative to unguided against the guidance scale (what guidance raises);
    right: precision and class consistency with the gate's floors dashed (what must hold); the chosen scale is the
    vertical line in both panels. ``gate`` is :func:`ltaug.eval.gate.choose_scale`'s result."""
    plt = _plt()
    rows = list(gate["rows"])
    s = np.array([r["scale"] for r in rows], dtype=np.float64)
    ref = next(r for r in rows if r["scale"] == 0)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for key, mark in (("avg_knn", "o-"), ("lof", "s-"), ("rarity", "^-")):
        v = np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=np.float64)
        if ref.get(key):
            a.plot(s, v / ref[key], mark, label=key)
    a.axhline(1.0, color="grey", lw=0.8)
    a.set_xlabel("guidance.minority.scale")
    a.set_ylabel("relative to unguided")
    a.set_title("low-density metrics (higher = rarer)")
    a.legend(fontsize=8)
    for key, mark, floor in (("precision", "o-", "precision_floor"), ("class_consistency", "s-", "class_consistency_floor")):
        line, = b.plot(s, [r[key] for r in rows], mark, label=key)
        b.axhline(gate[floor], color=line.get_color(), ls="--", lw=0.9)
    fail = [r["scale"] for r in rows if not r.get("passes", True)]
    if fail:
        b.plot(fail, [min(r["precision"], r["class_consistency"]) for r in rows if not r.get("passes", True)], "x",
               color="red", ms=9, label="fails the gate")
    b.set_xlabel("guidance.minority.scale")
    b.set_ylim(0, 1.02)
    b.set_title("precision / class consistency (dashed: floors)")
    b.legend(fontsize=8, loc="lower left")
    for ax in (a, b):
        ax.axvline(gate["chosen_scale"], color="black", lw=1.0, ls=":")
    fig.suptitle(f"{title}: chosen scale {gate['chosen_scale']:g}", fontsize=10)
    return _save(fig, path)
