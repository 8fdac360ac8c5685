"""Stage: train a classifier (+ long-tail method, + optional weighted synthetic data), evaluate it on the
balanced test set, and write its plots — on any launcher, with one worker function and one summary.

Synthetic data (``classifier.synthetic_uri``) is *planned* on the driver, never collected there: the shard
list and per-shard per-class counts (generation stats, else one counting pass), optionally one streaming
scoring pass with the baseline ``classifier.checkpoint`` (ID / AID / OOD shares; ``filter.apply`` excludes
what the filter drops), then per-class quotas as per-shard keep counts. That small ``SyntheticSpec``
travels with the task; every worker streams its shards (``ltaug.classify.stream``). Plots and generative
metrics use a bounded sample of the kept set (at most ``SAMPLE_MAX`` images).
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from ..classify import IdAidOodFilter, load_classifier, shares
from ..classify.stream import SyntheticSpec, plan_synthetic, sample_set
from ..classify import train_classifier as fit_classifier
from ..config import Config
from ..data import ImageSet, LTDataset
from ..data.dataset import val_note, val_report
from ..eval import evaluate_classifier, plots
from ..track import Tracker
from ..train import World, resolve_device
from .data import stage_data, worker_data
from .checks import check_classifier_fits
from .launcher import Launcher, Task
from .run import Run

ACC_KEYS = ("acc_all", "acc_many", "acc_medium", "acc_few")
VAL_ACC_KEYS = tuple(f"val_{k}" for k in ACC_KEYS)   # the same on the validation split (selection uses these)
SAMPLE_MAX = 10_000   # kept synthetic images decoded on the driver for plots and generative metrics (a sample)
GENERATIVE_KEYS = ("fid", "kid", "precision", "recall", "density", "coverage", "fid_many", "fid_medium", "fid_few",
                   "avg_knn", "lof", "rarity")


def classifier_worker(task: Task, world: World, tracker: Tracker) -> dict[str, Any]:
    """``train_classifier`` of the core on the task's dataset artifact (+ the synthetic spec it streams);
    the result carries the worker's own peak RSS (``worker_peak_rss_mb``)."""
    res = fit_classifier(task.cfg, worker_data(task.data_uri), world, task.ckpt_dir, synthetic=task.payload,
                         progress=world.is_main)
    return {"checkpoint": res.checkpoint, "steps": res.steps, "num_real": res.num_real,
            "num_synthetic": res.num_synthetic, "sync_batchnorm": res.sync_batchnorm,
            "worker_peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM, MiB); None where /proc is absent."""
    try:
        with open("/proc/self/status") as fh:
            kb = next(int(ln.split()[1]) for ln in fh if ln.startswith("VmHWM:"))
        return round(kb / 1024, 1)
    except (OSError, StopIteration, ValueError):
        return None


def accuracy_summary(model: Any, data: LTDataset, batch_size: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary entries, the test report): ``acc_*`` on the balanced test set, ``val_acc_*`` on the
    validation split (None when it is empty), ``val_counts`` and ``val_held_out``."""
    test = evaluate_classifier(model, data.test, data.groups, batch_size)
    val = evaluate_classifier(model, data.validation, data.groups, batch_size)
    out = {**{k: test[k] for k in ACC_KEYS}, **{f"val_{k}": val[k] for k in ACC_KEYS}, **val_report(data)}
    return out, test


def read_synthetic(cfg: Config, run: Run, data: LTDataset, baseline: Any, bank: Any,
                   summary: dict[str, Any]) -> SyntheticSpec | None:
    """``classifier.synthetic_uri`` as a :class:`SyntheticSpec` (counts and per-shard keep counts, no images):
    scored by the baseline in one streaming pass, filtered (``filter.apply``), quota'd."""
    c = cfg.classifier
    if not c.synthetic_uri:
        return None
    scored = baseline is not None and bank is not None
    if cfg.filter.apply and not scored:
        raise ValueError("filter.apply=true needs classifier.checkpoint (a baseline with a feature bank)")
    cols: dict[str, list] = {"distance": [], "category": [], "keep": [], "label": []}
    score = None
    if scored:
        filt = IdAidOodFilter(baseline, bank, cfg.filter.keep, drop=False, batch_size=c.eval_batch_size)

        def score(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
            out = filt({"image": images, "label": labels})
            for k in cols:
                cols[k].append(np.asarray(out[k]))
            return out["keep"] if cfg.filter.apply else np.ones(len(labels), bool)
    spec = plan_synthetic(c.synthetic_uri, data.train.counts, image_size=data.train.image_size,
                          channels=data.train.channels, num_classes=data.num_classes,
                          max_per_class=c.synthetic_max_per_class, fill_to=c.synthetic_fill_to,
                          on_bad=cfg.data.on_bad_record, score=score)
    summary["synthetic_read"] = int(sum(len(v) for v in cols["label"])) if scored else spec.read
    if scored and cols["label"]:
        col = {k: np.concatenate(v) for k, v in cols.items()}
        summary["synthetic_shares"] = shares(col["category"])
        plots.distance_histogram(col["distance"], bank.radii.cpu().numpy()[col["label"]], col["category"],
                                 run.local("id_aid_ood.png"), "all read synthetic: distance to class centre / d_f",
                                 kept=col["keep"] if cfg.filter.apply else None)
        run.publish(run.local("id_aid_ood.png"), "id_aid_ood.png")
        if cfg.filter.apply:
            summary["synthetic_after_filter"] = spec.read
    return spec


def _shown(synthetic: Any) -> ImageSet | None:
    """An in-memory view for plots / metrics: a spec's bounded sample, an ImageSet as it is."""
    return sample_set(synthetic, SAMPLE_MAX) if isinstance(synthetic, SyntheticSpec) else synthetic


def train_classifier(cfg: Config, run: Run, launcher: Launcher, *, synthetic: SyntheticSpec | ImageSet | None = None,
                     extras: bool = True) -> dict[str, Any]:
    """Train + evaluate. ``synthetic`` (a spec from :func:`plan_synthetic`, or an in-memory ``ImageSet``)
    skips reading ``classifier.synthetic_uri``;
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
    shown = _shown(synthetic)
    _plots(cfg, run, data, report, synthetic, baseline_pc, shown)
    if shown is not None and len(shown) >= 2:
        summary["generative"] = generative_report(cfg, run, data, shown, baseline or model, bank)
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


def _plots(cfg: Config, run: Run, data: LTDataset, report: dict, synthetic: Any, baseline_pc,
           shown: ImageSet | None = None) -> None:
    K = data.num_classes
    syn_counts = None if synthetic is None else synthetic.kept_counts if isinstance(synthetic, SyntheticSpec) \
        else np.bincount(synthetic.labels, minlength=K)
    shown = _shown(synthetic) if shown is None else shown
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
    if shown is not None and len(shown):
        made.append(plots.sample_grid(shown.images, shown.labels, run.local("samples_synthetic.png"), K,
                                      cfg.eval.grid_per_class, "synthetic"))
    for p in made:
        run.publish(p, os.path.basename(p))


def generative_report(cfg: Config, run: Run, data: LTDataset, synthetic: ImageSet, classifier, bank) -> dict:
    """The generative protocol (:mod:`ltaug.eval.protocol`) of the synthetic set: per class against the training
    images of its class (topped up from validation), pooled against a class-balanced reference, in the evaluation
    space (``eval.features``: evalnet or Inception; never the classifier that filtered it). ``generative.json``.
    A streamed ``SyntheticSpec`` is measured on its bounded sample (:data:`SAMPLE_MAX` images)."""
    from ..eval.protocol import SCALAR_KEYS
    from .evaluate import protocol_report

    synthetic = _shown(synthetic)

    rep = protocol_report(cfg, data, synthetic, next(classifier.parameters()).device)
    run.write_json("generative.json", rep)
    run.tracker.log_metrics({f"gen_{k}": rep[k] for k in SCALAR_KEYS if isinstance(rep.get(k), float)})  # at the last step
    return {k: rep.get(k) for k in (*SCALAR_KEYS, "near_copy_rate_per_class", "features")}


__all__ = ["train_classifier", "classifier_worker", "read_synthetic", "generative_report", "accuracy_summary",
           "ACC_KEYS", "VAL_ACC_KEYS", "accuracy_table"]
