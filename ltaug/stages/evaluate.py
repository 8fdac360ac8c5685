"""Stage: evaluate a diffusion checkpoint with the standard generative protocol, and/or a classifier checkpoint.

- ``model.checkpoint`` (diffusion): ``eval.num_per_class`` class-uniform samples per class with the config's
  sampler and guidance (``samples.npz`` in the run dir), compared class by class with the real training images
  (topped up from validation) in the evaluation feature space (``eval.features``: an evaluation network trained
  once on all training images of the source and cached, or Inception-v3 from ``eval.inception_weights``):
  FID / KID / precision / recall / density / coverage pooled and per class, group FIDs, class consistency,
  near-copy rate, CAS, AvgkNN / LOF / rarity (:mod:`ltaug.eval.protocol`). Written to ``evaluation.json``.
- ``classifier.checkpoint``: top-1 All / Many / Medium / Few on the balanced test set, per class, confusion,
  ``val_acc_*``; with ``classifier.synthetic_uri`` also the protocol's metrics of those shards.
- both: both (the classifier also serves ``guidance.minority.distance=classifier`` while sampling).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..config import Config
from ..data import ImageSet, LTDataset
from ..eval import cas_config, generative_protocol, make_feature_space, resolve_features
from ..eval.evalnet import load_or_train_evalnet
from ..eval.protocol import SCALAR_KEYS
from ..train import resolve_device
from .data import cache_root, stage_data
from .checks import check_classifier_fits, check_diffusion_fits
from .launcher import Launcher
from .run import Run


def protocol_report(cfg: Config, data: LTDataset, samples: ImageSet, device: torch.device | str) -> dict[str, Any]:
    """:func:`~ltaug.eval.protocol.generative_protocol` of ``samples`` in the configured evaluation space."""
    evalnet, info = load_or_train_evalnet(cfg, cache_root(cfg), device)
    space = make_feature_space(cfg.eval, evalnet=evalnet, device=device)
    rep = generative_protocol(data.train, data.validation, data.test, samples, data.groups, space, evalnet,
                              cas_cfg=cas_config(cfg), device=device, min_real_per_class=cfg.eval.min_real_per_class,
                              k=cfg.eval.knn_k, kid_subsets=cfg.eval.kid_subsets,
                              kid_subset_size=cfg.eval.kid_subset_size, seed=cfg.seed)
    rep["features"] = resolve_features(cfg.eval)
    rep["reference"] = (f"per class: its training images, topped up with validation images to "
                        f"eval.min_real_per_class={cfg.eval.min_real_per_class}; pooled: class-balanced")
    rep["evalnet"] = {k: info.get(k) for k in ("checkpoint", "digest", "cached", "num_train", "steps", "arch")}
    return rep


def draw_samples(cfg: Config, checkpoint: str, num_classes: int, device: torch.device | str) -> ImageSet:
    """``eval.num_per_class`` samples of every class with the config's sampler and guidance (seeds from sample.seed)."""
    from ..diffusion import sample_seeds
    from ..generate import ImageGenerator

    gen = ImageGenerator(cfg, checkpoint, device)
    n = cfg.eval.num_per_class
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), n)
    seeds = np.asarray(sample_seeds(cfg.sample.seed, len(labels)), np.int64)
    bs = cfg.sample.batch_size
    images = [gen({"label": labels[a:a + bs], "seed": seeds[a:a + bs]})["image"] for a in range(0, len(labels), bs)]
    return ImageSet(np.concatenate(images), labels, num_classes, source="samples")


def evaluate_diffusion(cfg: Config, run: Run, data: LTDataset, checkpoint: str, prefix: str = "") -> dict[str, Any]:
    """Sample, write ``samples.npz`` and ``evaluation.json``, log the scalar fields (``prefix`` + name); returns
    the report (with ``samples`` and ``checkpoint``)."""
    device = resolve_device(cfg.resources)
    samples = draw_samples(cfg, checkpoint, data.num_classes, device)
    npz = run.local("samples.npz")
    np.savez_compressed(npz, images=samples.images, labels=samples.labels)
    rep = generative_protocol_summary(protocol_report(cfg, data, samples, device), cfg, checkpoint)
    rep["samples"] = run.publish(npz, "samples.npz")
    run.write_json("evaluation.json", rep)
    run.tracker.log_metrics({f"{prefix}{k}": rep[k] for k in SCALAR_KEYS if isinstance(rep.get(k), float)})
    return rep


def minority_gate(cfg: Config, run: Run, data: LTDataset, checkpoint: str) -> dict[str, Any]:
    """The quality gate (:mod:`ltaug.eval.gate`) over ``eval.minority_scales`` and 0: the same seeds per scale,
    scored on the validation split; ``minority_gate.json`` + ``minority_gate.png``; returns the gate."""
    from ..config import with_values
    from ..eval.gate import choose_scale, gate_metrics
    from ..eval.plots import minority_gate_plot

    device = resolve_device(cfg.resources)
    evalnet, _ = load_or_train_evalnet(cfg, cache_root(cfg), device)
    space = make_feature_space(cfg.eval, evalnet=evalnet, device=device)
    rows = []
    for scale in sorted({0.0, *map(float, cfg.eval.minority_scales)}):
        samples = draw_samples(with_values(cfg, {"guidance.minority.scale": scale}), checkpoint, data.num_classes, device)
        rows.append({"scale": scale, **gate_metrics(data.validation, samples, space, evalnet, cfg.eval.knn_k, cfg.seed)})
        print(f"[gate] scale {scale:g}: " + "  ".join(f"{k} {rows[-1][k]:.3f}" for k in
                                                     ("precision", "class_consistency", "avg_knn")
                                                     if rows[-1].get(k) is not None), flush=True)
    gate = choose_scale(rows)
    gate.update({"checkpoint": checkpoint, "num_per_class": cfg.eval.num_per_class, "sampler": cfg.sample.sampler,
                 "space": cfg.guidance.minority.space, "distance": cfg.guidance.minority.distance,
                 "features": resolve_features(cfg.eval), "reference": "validation split, class-balanced"})
    png = minority_gate_plot(gate, run.local("minority_gate.png"))
    gate["plot"] = run.publish(png, "minority_gate.png")
    run.write_json("minority_gate.json", gate)
    run.tracker.log_metrics({"gate_chosen_scale": gate["chosen_scale"]})
    return gate


def generative_protocol_summary(rep: dict[str, Any], cfg: Config, checkpoint: str) -> dict[str, Any]:
    return {**rep, "checkpoint": checkpoint, "num_per_class": cfg.eval.num_per_class,
            "sampler": cfg.sample.sampler, "sample_steps": cfg.sample.steps, "omega": cfg.guidance.cfg.omega,
            "minority_scale": cfg.guidance.minority.scale}


def evaluate(cfg: Config, run: Run, launcher: Launcher | None = None) -> dict[str, Any]:
    """summary, model.checkpoint: generative (the protocol's report; also evaluation.json), samples; classifier.
    checkpoint: checkpoint, acc_all/many/medium/few (test), val_acc_* (validation), val_counts, val_held_out,
    per_class, confusion, groups (+ generative of classifier.synthetic_uri); dataset always."""
    from .train_classifier import ACC_KEYS, VAL_ACC_KEYS, accuracy_summary, generative_report, read_synthetic

    if not cfg.classifier.checkpoint and not cfg.model.checkpoint:
        raise ValueError("model.checkpoint / classifier.checkpoint: set the diffusion model and/or the classifier to "
                         "evaluate (a .pt file or checkpoints directory)")
    data, data_uri = stage_data(cfg)
    summary: dict[str, Any] = {"dataset": data_uri, "groups": data.groups}
    if cfg.classifier.checkpoint:
        from ..classify import load_classifier

        ckpt = check_classifier_fits("classifier.checkpoint", cfg.classifier.checkpoint, data)
        model, bank = load_classifier(ckpt, resolve_device(cfg.resources))
        acc, rep = accuracy_summary(model, data, cfg.classifier.eval_batch_size)
        summary.update({"checkpoint": ckpt, **acc, "per_class": rep["per_class"], "confusion": rep["confusion"]})
        run.tracker.log_metrics({k: acc[k] for k in (*ACC_KEYS, *VAL_ACC_KEYS) if acc[k] is not None})
        synthetic = read_synthetic(cfg, run, data, model, bank, summary)
        if synthetic is not None and len(synthetic) >= 2:
            summary["generative"] = generative_report(cfg, run, data, synthetic, model, bank)
    if cfg.model.checkpoint:
        ckpt = check_diffusion_fits("model.checkpoint", cfg.model.checkpoint, data, cfg.sample.use_ema)
        rep = evaluate_diffusion(cfg, run, data, ckpt)
        summary["diffusion"] = {k: rep[k] for k in (*SCALAR_KEYS, "checkpoint", "samples", "features")}
        summary["diffusion"]["evaluation"] = run.path("evaluation.json")
        if cfg.eval.minority_scales:
            gate = minority_gate(cfg, run, data, ckpt)
            summary["minority_gate"] = {k: gate[k] for k in ("chosen_scale", "rule", "rows", "plot")}
    return summary


__all__ = ["evaluate", "evaluate_diffusion", "protocol_report", "draw_samples", "minority_gate"]
