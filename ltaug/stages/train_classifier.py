"""Stage: train a classifier (+ long-tail method, + optional weighted synthetic data), evaluate it on the
balanced test set, and write its plots — on any launcher, with one worker function and one summary.

Synthetic data (``classifier.synthetic_uri``) is read and selected on the driver: optionally scored by
the baseline ``classifier.checkpoint`` (ID / AID / OOD shares, ``filter.apply`` drops what the filter
drops), then per-class quotas; the selected set travels with the task.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

from ..classify import IdAidOodFilter, load_classifier, load_synthetic, select_synthetic, shares
from ..classify import train_classifier as fit_classifier
from ..config import Config
from ..data import ImageSet, LTDataset
from ..data.dataset import val_note, val_report
from ..eval import evaluate_classifier, evaluate_generated, make_feature_space, plots
from ..track import Tracker
from ..train import World, resolve_device
from .data import stage_data, worker_data
from .checks import check_classifier_fits
from .launcher import Launcher, Task
from .run import Run

ACC_KEYS = ("acc_all", "acc_many", "acc_medium", "acc_few")
VAL_ACC_KEYS = tuple(f"val_{k}" for k in ACC_KEYS)   # the same on the validation split (selection uses these)
GENERATIVE_KEYS = ("fid", "kid", "precision", "recall", "density", "coverage", "fid_many", "fid_medium", "fid_few",
                   "avg_knn", "lof", "rarity")


def classifier_worker(task: Task, world: World, tracker: Tracker) -> dict[str, Any]:
    """``train_classifier`` of the core on the task's dataset artifact (+ the selected synthetic set)."""
    res = fit_classifier(task.cfg, worker_data(task.data_uri), world, task.ckpt_dir, synthetic=task.payload,
                         progress=world.is_main)
    return {"checkpoint": res.checkpoint, "steps": res.steps, "num_real": res.num_real,
            "num_synthetic": res.num_synthetic, "sync_batchnorm": res.sync_batchnorm}


def accuracy_summary(model: Any, data: LTDataset, batch_size: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary entries, the test report): ``acc_*`` on the balanced test set, ``val_acc_*`` on the
    validation split (None when it is empty), ``val_counts`` and ``val_held_out``."""
    test = evaluate_classifier(model, data.test, data.groups, batch_size)
    val = evaluate_classifier(model, data.validation, data.groups, batch_size)
    out = {**{k: test[k] for k in ACC_KEYS}, **{f"val_{k}": val[k] for k in ACC_KEYS}, **val_report(data)}
    return out, test


def read_synthetic(cfg: Config, run: Run, data: LTDataset, baseline: Any, bank: Any,
                   summary: dict[str, Any]) -> ImageSet | None:
    """``classifier.synthetic_uri`` as an ImageSet: scored by the baseline, filtered (``filter.apply``), quota'd."""
    c = cfg.classifier
    if not c.synthetic_uri:
        return None
    synthetic = load_synthetic(c.synthetic_uri, data.train.image_size, data.train.channels, data.num_classes,
                               cfg.data.on_bad_record)
    summary["synthetic_read"] = len(synthetic)
    if baseline is not None and bank is not None and len(synthetic):
        scored = IdAidOodFilter(baseline, bank, cfg.filter.keep, drop=False, batch_size=c.eval_batch_size)(
            {"image": synthetic.images, "label": synthetic.labels})
        summary["synthetic_shares"] = shares(scored["category"])
        plots.distance_histogram(scored["distance"], bank.radii.cpu().numpy()[synthetic.labels], scored["category"],
                                 run.local("id_aid_ood.png"), "all read synthetic: distance to class centre / d_f",
                                 kept=scored["keep"] if cfg.filter.apply else None)
        run.publish(run.local("id_aid_ood.png"), "id_aid_ood.png")
        if cfg.filter.apply:
            synthetic = synthetic.subset(np.where(scored["keep"])[0])
            summary["synthetic_after_filter"] = len(synthetic)
    elif cfg.filter.apply:
        raise ValueError("filter.apply=true needs classifier.checkpoint (a baseline with a feature bank)")
    return select_synthetic(synthetic, data.train.counts, c.synthetic_max_per_class, c.synthetic_fill_to,
                            torch.Generator().manual_seed(cfg.seed))


def train_classifier(cfg: Config, run: Run, launcher: Launcher, *, synthetic: ImageSet | None = None,
                     extras: bool = True) -> dict[str, Any]:
    """Train + evaluate. ``synthetic`` (already selected) skips reading ``classifier.synthetic_uri``;
    ``extras=False`` skips the plots and generative metrics (the pipeline's report makes its own).

    summary: checkpoint, acc_all/many/medium/few (balanced test set), val_acc_all/many/medium/few (validation
    split), val_counts, val_held_out, per_class, confusion, groups, steps, num_real, num_synthetic,
    sync_batchnorm, world_size, dataset (+ baseline_*, synthetic_*, generative with extras).
    """
    c = cfg.classifier
    data, data_uri = stage_data(cfg)
    if extras:          # the pipeline prints it once for all its classifiers
        print(val_note(data), flush=True)
    device = resolve_device(cfg.resources)
    summary: dict[str, Any] = {}
    baseline = bank = None
    if c.checkpoint:
        baseline, bank = load_classifier(check_classifier_fits("classifier.checkpoint", c.checkpoint, data), device)
    if synthetic is None:
        synthetic = read_synthetic(cfg, run, data, baseline, bank, summary)
    task = Task("classifier", cfg, data_uri, run.path("checkpoints"), run.dir, payload=synthetic)
    out = launcher.train(classifier_worker, task, run.tracker)
    run.log_uri(out["checkpoint"], "checkpoints")   # runs:/<run id>/checkpoints/ckpt-XXXXXXXXX.pt
    model, _ = load_classifier(out["checkpoint"], device)
    acc, report = accuracy_summary(model, data, c.eval_batch_size)
    summary.update({**out, **acc, "per_class": report["per_class"],
                    "confusion": report["confusion"], "groups": data.groups, "dataset": data_uri})
    run.tracker.log_metrics({k: acc[k] for k in (*ACC_KEYS, *VAL_ACC_KEYS) if acc[k] is not None},
                            step=out.get("steps"))   # final metrics at the last training step
    if not extras:
        return summary
    baseline_pc = None
    if baseline is not None:
        base = evaluate_classifier(baseline, data.test, data.groups, c.eval_batch_size)
        baseline_pc = base["per_class"]
        summary.update({f"baseline_{k}": base[k] for k in ACC_KEYS})
    print(accuracy_table(summary), flush=True)
    _plots(cfg, run, data, report, synthetic, baseline_pc)
    if synthetic is not None and len(synthetic) >= 2:
        summary["generative"] = generative_report(cfg, run, data, synthetic, baseline or model, bank)
    return summary


def accuracy_table(summary: dict[str, Any]) -> str:
    """The printed accuracy table: All / Many / Medium / Few on the balanced test set and the validation split."""
    f = lambda v: "    -" if v is None else f"{100 * v:5.1f}"  # noqa: E731
    rows = [("test", [summary.get(k) for k in ACC_KEYS]), ("val", [summary.get(k) for k in VAL_ACC_KEYS])]
    if summary.get("baseline_acc_all") is not None:
        rows.insert(0, ("baseline test", [summary.get(f"baseline_{k}") for k in ACC_KEYS]))
    lines = [f"{'top-1 %':14s}   all  many medium   few"]
    lines += [f"{name:14s} {f(v[0])} {f(v[1])}  {f(v[2])} {f(v[3])}" for name, v in rows]
    return "\n".join(lines)


def _plots(cfg: Config, run: Run, data: LTDataset, report: dict, synthetic: ImageSet | None, baseline_pc) -> None:
    K = data.num_classes
    syn_counts = np.bincount(synthetic.labels, minlength=K) if synthetic is not None else None
    with open(run.local("confusion.json"), "w") as fh:
        json.dump({"confusion": report["confusion"], "rows": "true class", "cols": "predicted class"}, fh)
    made = [run.local("confusion.json"),
            plots.confusion_matrix_plot(report["confusion"], run.local("confusion.png")),
            plots.class_histogram(data.train.counts.as_array(), run.local("class_histogram.png"), syn_counts,
                                  data.train.class_names,
                                  "train images per class" + (" (real + synthetic)" if syn_counts is not None else "")),
            plots.per_class_accuracy(report["per_class"], run.local("per_class_accuracy.png"), baseline_pc, data.groups),
            plots.sample_grid(data.train.images, data.train.labels, run.local("samples_real.png"), K,
                              cfg.eval.grid_per_class, "real (long-tailed train set)")]
    if synthetic is not None and len(synthetic):
        made.append(plots.sample_grid(synthetic.images, synthetic.labels, run.local("samples_synthetic.png"), K,
                                      cfg.eval.grid_per_class, "synthetic"))
    for p in made:
        run.publish(p, os.path.basename(p))


def generative_report(cfg: Config, run: Run, data: LTDataset, synthetic: ImageSet, classifier, bank) -> dict:
    """Generative metrics of the synthetic set against the balanced test set (features: eval.features)."""
    space = make_feature_space(cfg.eval, classifier=classifier, device=next(classifier.parameters()).device)
    (rx, ry), (fx, fy) = data.test.tensors(), synthetic.tensors()
    rep = evaluate_generated(space, rx, ry, fx, fy, data.num_classes, data.groups, cfg.eval.knn_k,
                             cfg.eval.kid_subsets, cfg.eval.kid_subset_size, torch.Generator().manual_seed(cfg.seed),
                             bank=bank, bank_space=make_feature_space(cfg.eval, classifier=classifier) if bank is not None else None)
    rep["reference"] = "balanced test set"
    rep["features"] = cfg.eval.features
    run.write_json("generative.json", rep)
    run.tracker.log_metrics({f"gen_{k}": rep[k] for k in GENERATIVE_KEYS if isinstance(rep.get(k), float)})  # at the last step
    return {k: rep.get(k) for k in GENERATIVE_KEYS}


__all__ = ["train_classifier", "classifier_worker", "read_synthetic", "generative_report", "accuracy_summary",
           "ACC_KEYS", "VAL_ACC_KEYS", "accuracy_table"]
