"""Stage: evaluate a trained classifier (``classifier.checkpoint``) on the balanced test set — All / Many /
Medium / Few, per class, confusion — and on the validation split (``val_acc_*``); given
``classifier.synthetic_uri``, also the generative metrics of that synthetic set against the balanced
test set (in ``eval.features`` space)."""
from __future__ import annotations

from typing import Any

from ..classify import load_classifier
from ..config import Config
from ..train import resolve_device
from .data import stage_data
from .checks import check_classifier_fits
from .launcher import Launcher
from .run import Run
from .train_classifier import ACC_KEYS, VAL_ACC_KEYS, accuracy_summary, generative_report, read_synthetic


def evaluate(cfg: Config, run: Run, launcher: Launcher | None = None) -> dict[str, Any]:
    """summary: checkpoint, acc_all/many/medium/few (test), val_acc_all/many/medium/few (validation), val_counts,
    val_held_out, per_class, confusion, groups, dataset (+ generative)."""
    if not cfg.classifier.checkpoint:
        raise ValueError("classifier.checkpoint: set the classifier to evaluate (a .pt file or checkpoints directory)")
    data, data_uri = stage_data(cfg)
    ckpt = check_classifier_fits("classifier.checkpoint", cfg.classifier.checkpoint, data)
    model, bank = load_classifier(ckpt, resolve_device(cfg.resources))
    acc, rep = accuracy_summary(model, data, cfg.classifier.eval_batch_size)
    summary: dict[str, Any] = {"checkpoint": ckpt, **acc, "per_class": rep["per_class"],
                               "confusion": rep["confusion"], "groups": data.groups, "dataset": data_uri}
    run.tracker.log_metrics({k: acc[k] for k in (*ACC_KEYS, *VAL_ACC_KEYS) if acc[k] is not None})
    synthetic = read_synthetic(cfg, run, data, model, bank, summary)
    if synthetic is not None and len(synthetic) >= 2:
        summary["generative"] = generative_report(cfg, run, data, synthetic, model, bank)
    return summary


__all__ = ["evaluate"]
