"""The pipeline's evaluation stage: the generative protocol of the diffusion model, plots, a Markdown report."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..config import Config
from ..data import LTDataset, ImageSet
from ..train import resolve_device
from ..generate import CATEGORY_NAMES
from .run import Run


ACC = ("acc_all", "acc_many", "acc_medium", "acc_few")


def _pct(v: float | None, sd: float | None = None, sign: str = "") -> str:
    return "–" if v is None else f"{100 * v:{sign}.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}")


def seeds_note(augmented: dict[str, Any]) -> str:
    """How many seeds the table is over (a single seed is said to be a demo, not a claim)."""
    seeds = [r.get("seed") for r in augmented.get("seeds") or []]
    if len(seeds) > 1:
        return f"Seeds {seeds}: each cell is the mean ± sample std (ddof 1) over {len(seeds)} seeds."
    return f"Seed {seeds[0] if seeds else '?'}: a single seed measures no spread, so these numbers are not a claim."


def paired_section(paired: dict[str, Any] | None) -> list[str]:
    """The per-seed paired difference augmented − the best classical method (chosen on the validation split)."""
    if not paired:
        return []
    if not paired.get("against"):
        return ["", f"No paired difference: {paired.get('reason')}."]
    lines = ["", f"## Paired difference: augmented − {paired['against']} (percentage points, test set)", "",
             f"`{paired['against']}` is the best classical method by {paired['reason']} — chosen on the validation "
             "split, never on the test set (candidates, val few / val all: "
             + ", ".join(f"{m} {_pct(c.get('val_acc_few'))} / {_pct(c.get('val_acc_all'))}"
                         for m, c in paired["candidates"].items()) + ").", "",
             "| seed | all | many | medium | few |", "|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | " + " | ".join(_pct(r.get(k), sign="+") for k in ACC) + " |" for r in paired["rows"]]
    lines.append("| mean | " + " | ".join(_pct(paired.get(k), paired.get(f"{k}_std"), "+") for k in ACC) + " |")
    return lines


def write_report(cfg: Config, run: Run, data: LTDataset, baseline: dict[str, Any], classical: dict[str, dict],
                 augmented: dict[str, Any], synthetic: ImageSet, gen: dict[str, Any],
                 paired: dict[str, Any] | None = None, diffusion_checkpoint: str = "") -> dict[str, Any]:
    """Plots and report.md; the generative numbers are the standard protocol of ``diffusion_checkpoint``
    (class-uniform samples vs the training images per class, evaluation feature space; ``evaluation.json``)."""
    from ..classify import IdAidOodFilter, load_classifier
    from ..config import with_values
    from ..eval import plots
    from .evaluate import evaluate_diffusion

    device = resolve_device(cfg.resources)
    model, bank = load_classifier(baseline["checkpoint"], device)
    K = data.num_classes
    real_counts = data.train.counts.as_array()
    syn_counts = np.bincount(synthetic.labels, minlength=K) if len(synthetic) else np.zeros(K, np.int64)
    made: dict[str, str] = {}
    made["class_histogram"] = plots.class_histogram(real_counts, run.local("plots", "class_histogram.png"), syn_counts,
                                                    data.train.class_names, "train images per class: real + synthetic")
    methods = {f"baseline ({cfg.pipeline.baseline_method})": baseline["per_class"],
               **{m: r["per_class"] for m, r in classical.items()},
               f"augmented ({cfg.pipeline.augmented_method} + synthetic)": augmented["per_class"]}
    made["per_class_accuracy"] = plots.per_class_accuracy(None, run.local("plots", "per_class_accuracy.png"),
                                                          groups=data.groups, methods=methods,
                                                          title="per-class top-1 (balanced test set)")
    made["samples_real"] = plots.sample_grid(data.train.images, data.train.labels, run.local("plots", "samples_real.png"),
                                             K, cfg.eval.grid_per_class, "real (long-tailed train set)")
    generative = None
    if len(synthetic):
        made["samples_synthetic"] = plots.sample_grid(synthetic.images, synthetic.labels,
                                                      run.local("plots", "samples_synthetic.png"), K,
                                                      cfg.eval.grid_per_class, "synthetic (kept)")
        if bank is not None:
            scored = IdAidOodFilter(model, bank, cfg.filter.keep, drop=False,
                                    batch_size=cfg.classifier.eval_batch_size)({"image": synthetic.images,
                                                                                "label": synthetic.labels})
            d_dist, d_lab, d_cat = dropped_rows(gen)
            radii = bank.radii.cpu().numpy()
            cats = np.concatenate([np.asarray(scored["category"], np.int64), d_cat])
            counted = {c: int((d_cat == i).sum()) for i, c in enumerate(CATEGORY_NAMES)}
            rest = {c: max(0, n - counted[c]) for c, n in dropped_by_category(gen, scored["category"]).items()}
            made["id_aid_ood"] = plots.distance_histogram(
                np.concatenate([np.asarray(scored["distance"], float), d_dist]),
                np.concatenate([radii[synthetic.labels], radii[d_lab]]), cats,
                run.local("plots", "id_aid_ood.png"), "all generated: distance to class centre / d_f",
                dropped=rest, kept=np.concatenate([np.ones(len(synthetic), bool), np.zeros(len(d_cat), bool)]))
    if diffusion_checkpoint:     # the protocol on the pipeline's diffusion model (sampler / guidance as generated)
        pcfg = with_values(cfg, {"model.checkpoint": diffusion_checkpoint, "classifier.checkpoint": baseline["checkpoint"]})
        generative = evaluate_diffusion(pcfg, run, data, diffusion_checkpoint, prefix="gen_")
    for p in made.values():
        run.publish(p, os.path.relpath(p, run.local_dir), "plots")
    md = _markdown(cfg, data, baseline, classical, augmented, gen, len(synthetic), generative, made, run, paired)
    path = run.local("report.md")
    with open(path, "w") as fh:
        fh.write(md)
    uri = run.publish(path, "report.md")
    return {"generative": _compact(generative), "report": uri}


def dropped_rows(gen: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distance, class, category index) of every sample the generation filter dropped, from the shards' stats
    (outputs written before the stats kept them give empty arrays; their drops are then counted only)."""
    from ..generate.shards import read_stats

    man, out = (gen or {}).get("manifest") or {}, (gen or {}).get("output_uri")
    rows = []
    for sh in man.get("shards", []) if out else []:
        for c, cat, d in read_stats(out, sh["name"]).dropped_rows.values():
            if d is not None and cat in CATEGORY_NAMES:
                rows.append((float(d), int(c), CATEGORY_NAMES.index(cat)))
    a = np.asarray(rows, float).reshape(-1, 3)
    return a[:, 0], a[:, 1].astype(np.int64), a[:, 2].astype(np.int64)


def dropped_by_category(gen: dict[str, Any], kept_categories: Any) -> dict[str, int]:
    """Generated-but-dropped samples per category: the manifest's category counts (all generated samples)
    minus the kept ones, whose distances the shards hold (the dropped ones' distances are not stored)."""
    cats = ((gen or {}).get("manifest") or {}).get("categories") or {}
    kept = np.bincount(np.asarray(kept_categories, np.int64), minlength=3)
    return {c: max(0, int(cats.get(c, 0)) - int(kept[i])) for i, c in enumerate(("id", "aid", "ood"))}


def _compact(gen: dict[str, Any] | None) -> dict[str, Any] | None:
    if gen is None:
        return None
    return {k: v for k, v in gen.items() if isinstance(v, (int, float, str)) or k == "id_aid_ood"}


def _held(data: LTDataset) -> str:
    held = sum(data.val_held_out)
    if not len(data.validation):
        return "none: the val columns are empty"
    return (f"{held} held out of the train set, the rest from images the long-tail profile leaves unused" if held
            else "all from images the long-tail profile leaves unused")


def _markdown(cfg: Config, data: LTDataset, baseline, classical, augmented, gen, n_syn: int,
              generative, made: dict[str, str], run: Run, paired: dict[str, Any] | None = None) -> str:
    rows = [("baseline (" + cfg.pipeline.baseline_method + ")", baseline)] + \
        [(m, r) for m, r in classical.items()] + [(f"augmented ({cfg.pipeline.augmented_method} + synthetic)", augmented)]
    lines = [f"# ltaug pipeline report — {cfg.data.source}, r = {cfg.data.ratio:g}", "",
             f"Train counts per class: {list(data.counts.counts)}; test set balanced ({len(data.test)} images). "
             f"Groups: " + ", ".join(f"{g} = {v}" for g, v in data.groups.items()), "",
             f"Validation split: {sum(data.validation.counts.counts)} images ({_held(data)}); the val columns are "
             "top-1 on it: choose settings by them, never by the test columns.", "",
             "## Top-1 on the balanced test set (%)", "", seeds_note(augmented), "",
             "| method | all | many | medium | few | val all | val many | val medium | val few |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows:
        rep = r
        lines.append(f"| {name} | " + " | ".join(_pct(rep.get(k), rep.get(f"{k}_std"))
                                                 for k in (*ACC, *(f"val_{a}" for a in ACC))) + " |")
    lines += paired_section(paired)
    man = gen.get("manifest")
    gate = gen.get("gate")
    scale = gate["chosen_scale"] if gate else cfg.guidance.minority.scale
    gated = ", chosen by the quality gate below" if gate else ""
    lines += ["", "## Generation", ""]
    if cfg.pipeline.seed_diffusion and len(cfg.pipeline.seeds) > 1:
        lines += [f"One diffusion model and shard set per seed (pipeline.seed_diffusion); below: seed "
                  f"{cfg.pipeline.seeds[0]}'s.", ""]
    if man:
        cats = man.get("categories", {})
        lines.append(f"Requested {man['requested']}, generated {man.get('generated')}, written {man['written']} "
                     f"(ID {cats.get('id', 0)}, AID {cats.get('aid', 0)}, OOD {cats.get('ood', 0)}; kept: "
                     f"{', '.join(cfg.filter.keep)}). Synthetic images used for training: {n_syn}, weight "
                     f"omega = {cfg.classifier.synthetic_weight}. Sampler {cfg.sample.sampler} x {cfg.sample.steps} steps, "
                     f"CFG omega {cfg.guidance.cfg.omega}, minority scale {scale} "
                     f"(every {cfg.guidance.minority.every}{gated}). Shards: `{gen['output_uri']}`.")
    if gate:
        lines += ["", "Quality gate of minority guidance (validation split; the largest scale within 2 points of "
                  "unguided class consistency and 10% of its precision):", "",
                  "| scale | precision | class consistency | AvgkNN | passes |", "|---|---|---|---|---|"]
        lines += [f"| {r['scale']:g} | {r.get('precision', float('nan')):.3f} | "
                  f"{r.get('class_consistency', float('nan')):.3f} | {r.get('avg_knn', float('nan')):.3f} | "
                  f"{'yes' if r.get('passes') else 'no'} |" for r in gate.get("rows", [])]
        if gate.get("plot"):
            lines += ["", f"Gate plot: `{gate['plot']}`"]
    if generative:
        keys = [k for k in ("fid", "kid", "fid_many", "fid_medium", "fid_few", "precision", "recall", "density",
                            "coverage", "class_consistency", "cas_acc", "near_copy_rate", "avg_knn", "lof", "rarity")
                if k in generative]
        lines += ["", f"Generative protocol of the diffusion model ({generative.get('num_per_class')} class-uniform "
                  "samples per class; per class against that class's training images, topped up from validation; "
                  f"pooled against a class-balanced reference; {generative.get('features')} feature space, which "
                  "takes no part in training or filtering; `evaluation.json`):", "",
                  "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
                  "| " + " | ".join(f"{generative[k]:.4g}" if isinstance(generative[k], (int, float)) else
                                    ("–" if generative[k] is None else str(generative[k])) for k in keys) + " |"]
    lines += ["", "## Plots", ""]
    for name, p in made.items():
        lines.append(f"![{name}]({os.path.relpath(p, run.local_dir)})")
    return "\n".join(lines) + "\n"
