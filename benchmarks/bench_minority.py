"""Minority samplers on the quickstart diffusion model (issue 14 items 4-5): cost and low-density metrics,
and the speckle study. Not in run.py MODULES (the lead decides); run it by hand:

    .venv/bin/python benchmarks/bench_minority.py [--full] [--diffusion CKPT] [--classifier CKPT] [--grids DIR]

``run(quick)`` returns ``{"minority": [rows], "speckle": [rows]}``. Each row: the sampler setting, seconds and
network evaluations per image, AvgkNN / LOF / rarity (ltaug.eval.lowdensity, k=5) and precision (k=3) against
the real balanced test split in the baseline classifier's penultimate feature space, class consistency (the
baseline classifier's accuracy on the conditioning labels), and two speckle proxies: ``mid`` = the fraction
of pixels in (-0.8, 0.8) and ``tv`` = mean absolute neighbour difference (real digits give the reference).
Checkpoints default to the newest ``runs/train_diffusion-*/checkpoints`` and ``runs/train_classifier-*``
under the repository (train them with jobs/train_diffusion.py / jobs/train_classifier.py on
configs/quickstart.yaml).
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ltaug.config import load_config  # noqa: E402
from ltaug.diffusion import ClassifierFree, MinorityGuidance, Window, load_diffusion, sample_batched  # noqa: E402
from ltaug.eval.generative import precision_recall  # noqa: E402
from ltaug.eval.lowdensity import avg_knn, lof, rarity_score  # noqa: E402


def _newest(pattern: str) -> str:
    hits = sorted(glob.glob(os.path.join(ROOT, pattern)), key=os.path.getmtime)
    if not hits:
        raise FileNotFoundError(f"no checkpoint matches {pattern} under {ROOT}: train one first (see the docstring)")
    return hits[-1]


def _real(cfg):
    from ltaug.data.dataset import load_dataset
    data = load_dataset(cfg.data)
    t = data.test
    x = torch.from_numpy(t.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, torch.from_numpy(t.labels).long()


def speckle(x: torch.Tensor) -> dict[str, float]:
    """``mid``: share of pixels in (-0.8, 0.8); ``tv``: mean |neighbour difference| (images in [-1, 1])."""
    tv = 0.5 * ((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean())
    return {"mid": float(((x > -0.8) & (x < 0.8)).float().mean()), "tv": float(tv)}


class Counter(torch.nn.Module):
    """Counts network evaluations (rows fed, padded rows excluded approximately by the batch size)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.spec, self.calls = model, model.spec, 0

    def forward(self, x, t, y=None, **kw):
        self.calls += 1
        return self.model(x, t, y, **kw)


def evaluate(x, y, clf, real_f, feats) -> dict[str, float]:
    with torch.no_grad():
        f = feats(x)
        acc = float((clf(x).argmax(1) == y).float().mean())
    r = rarity_score(real_f, f, 5)
    return {"avg_knn": float(avg_knn(real_f, f, 5).mean()), "lof": float(lof(real_f, f, 5).mean()),
            "rarity": float(np.nanmean(r)) if np.isfinite(r).any() else float("nan"),
            "rarity_on": float(np.isfinite(r).mean()), "precision": precision_recall(real_f, f, 3)["precision"],
            "class_acc": acc, **speckle(x)}


def draw(model, schedule, y, seeds, scfg, guidances, bs):
    c = Counter(model)
    t0 = time.perf_counter()
    x = sample_batched(c, schedule, y, seeds, scfg, guidances=guidances, batch_size=bs)
    dt = time.perf_counter() - t0
    n_batches = -(-len(y) // bs)
    return x, {"s_per_img": dt / len(y), "nfe": c.calls / n_batches}


def run(quick: bool = True, diffusion: str = "", classifier: str = "", grids: str = "",
        speckle_ckpts: tuple[str, ...] = ()) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    cfg = load_config(os.path.join(ROOT, "configs/quickstart.yaml"), [])
    diffusion = diffusion or _newest("runs/train_diffusion-*/checkpoints")
    classifier = classifier or _newest("runs/train_classifier-*/checkpoints")
    from ltaug.classify import load_classifier
    clf, _ = load_classifier(classifier, "cpu")
    for p in clf.parameters():
        p.requires_grad_(False)
    feats = lambda x: clf.features(x).float()  # noqa: E731
    real_x, _ = _real(cfg)
    with torch.no_grad():
        real_f = feats(real_x)
    per_class = 5 if quick else 20
    K = clf.num_classes if hasattr(clf, "num_classes") else 10
    y = torch.arange(K).repeat_interleave(per_class)
    seeds = [1000 + k for k in range(len(y))]
    bs = 100
    base = cfg.sample
    cfg_omega = cfg.guidance.cfg.omega
    mwin = Window(every=cfg.guidance.minority.every)

    def loaded(path):
        ld = load_diffusion(path, device="cpu", use_ema=True)
        return ld.model, ld.schedule

    model, schedule = loaded(diffusion)
    out = {"diffusion": diffusion, "classifier": classifier, "images": len(y),
           "real": {**speckle(real_x)}, "minority": [], "speckle": []}
    saved = {}

    def row(table, name, scfg, gs, m=model, keep=False):
        x, cost = draw(m, schedule, y, seeds, scfg, gs, bs)
        r = {"setting": name, **cost, **evaluate(x, y, clf, real_f, feats)}
        out[table].append(r)
        print(json.dumps(r), flush=True)
        if keep:
            saved[name] = x
        return r

    cfgg = [ClassifierFree(cfg_omega)] if cfg_omega > 0 else []
    rep = dataclasses.replace
    # ---- the minority table: the quickstart sampler (DDIM 25 steps, CFG, x0 clipping) at eta 0 (the old
    # quickstart) and eta 1 (the quickstart since issue 14)
    scales = (0.1, 0.4) if quick else (0.05, 0.1, 0.2, 0.4)
    for eta in (0.0, 1.0):
        sc = rep(base, eta=eta)
        row("minority", f"eta={eta} unguided (CFG only)", sc, cfgg, keep=eta == 0.0)
        for w in scales:
            row("minority", f"eta={eta} mean w={w} target=guided (old default)", sc,
                cfgg + [MinorityGuidance(w, mwin, space="mean", target="guided")], keep=eta == 0.0 and w == 0.1)
            if not quick:
                row("minority", f"eta={eta} mean w={w} target=cond", sc, cfgg + [MinorityGuidance(w, mwin, space="mean")])
            row("minority", f"eta={eta} eps w={w} target=cond", sc, cfgg + [MinorityGuidance(w, mwin, space="eps")],
                keep=eta == 1.0 and w == 0.1)
        for g, d in ((1.5, 1),) if quick else ((1.2, 1), (1.5, 1), (2.0, 1), (2.5, 1), (1.5, 2)):
            row("minority", f"eta={eta} BnS gamma={g} skip={d}", rep(sc, bns_gamma=g, bns_skip=d), cfgg)
    base = rep(base, eta=0.0)   # the speckle study varies one thing at a time from the old quickstart sampler
    row("speckle", "ddim eta=0 clip cfg", base, cfgg)
    # ---- speckle study (unguided unless stated)
    for name, scfg in (("ddim no-clip", rep(base, clip_denoised=False)), ("ddim eta=1 clip", rep(base, eta=1.0)),
                       ("ddpm fixedlarge clip", rep(base, sampler="ddpm")),
                       ("ddpm fixedsmall clip", rep(base, sampler="ddpm", variance="fixedsmall"))):
        row("speckle", name + " cfg", scfg, cfgg)
    if not quick:
        row("speckle", "ddpm fixedlarge no-clip cfg", rep(base, sampler="ddpm", clip_denoised=False), cfgg)
        row("speckle", "ddim clip no-cfg", base, [])
    row("speckle", "ddim clip cfg mean w=0.1 guided stop=1", base,
        cfgg + [MinorityGuidance(0.1, mwin, space="mean", target="guided")])
    row("speckle", "ddim clip cfg mean w=0.1 guided stop=0.8", base,
        cfgg + [MinorityGuidance(0.1, Window(0.0, 0.8, mwin.every), space="mean", target="guided")])
    for ck in speckle_ckpts:
        m2, _ = loaded(ck)
        row("speckle", f"ddim clip cfg ckpt={os.path.basename(ck)}", base, cfgg, m=m2)
    if grids:
        from PIL import Image
        os.makedirs(grids, exist_ok=True)
        for name, x in saved.items():
            g = ((x.clamp(-1, 1) + 1) * 127.5).round().byte()[:, 0]            # [N,H,W]
            g = g.reshape(K, per_class, *g.shape[1:]).permute(0, 2, 1, 3).reshape(K * g.shape[1], -1)
            fn = "".join(ch if ch.isalnum() else "_" for ch in name) + ".png"
            Image.fromarray(g.numpy()).resize((g.shape[1] * 3, g.shape[0] * 3), Image.NEAREST).save(os.path.join(grids, fn))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--diffusion", default="")
    ap.add_argument("--classifier", default="")
    ap.add_argument("--grids", default="")
    ap.add_argument("--speckle-ckpt", action="append", default=[])
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    res = run(not a.full, a.diffusion, a.classifier, a.grids, tuple(a.speckle_ckpt))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)
