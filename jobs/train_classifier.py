"""Train the configured classifier + long-tail method, save its checkpoint with the feature bank, and
evaluate top-1 on the balanced test set (All / Many / Medium / Few, per class, confusion matrix)."""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ltaug.cli import job_main  # noqa: E402

DESCRIPTION = """Train a classifier on the long-tailed train set (optionally + synthetic shards, weighted by
omega), save the checkpoint with its feature bank, and evaluate on the balanced test set.

summary.json: checkpoint, acc_all, acc_many, acc_medium, acc_few, per_class (+ num_real, num_synthetic,
steps; baseline_* when classifier.checkpoint is given; synthetic_shares (ID/AID/OOD) when a baseline scores
the synthetic set; generative: FID/KID/precision/recall/density/coverage/group FID/AvgkNN/LOF/rarity of the
synthetic set against the balanced test set in eval.features space).
Artifacts: confusion.json, confusion.png, class_histogram.png, per_class_accuracy.png, samples_real.png
(+ samples_synthetic.png, generative.json with synthetic data; id_aid_ood.png with a baseline too).

examples:
  python jobs/train_classifier.py --config configs/quickstart.yaml
  python jobs/train_classifier.py --set classifier.method=balanced_softmax --set classifier.steps=500
  python jobs/train_classifier.py --set classifier.synthetic_uri=runs/gen/shards --set classifier.synthetic_weight=0.3 \\
      --set classifier.checkpoint=runs/baseline/checkpoints --set filter.apply=true
  CIFAR-LT recipe: --set classifier.epochs=200 --set classifier.batch_size=128 --set classifier.warmup=0.025
      (lr 0.1, momentum 0.9, wd 2e-4, milestones [0.8, 0.9] are the defaults)

classifier keys: checkpoint, arch (resnet20/32/56, resnet10/18/50), method (ce, resample, balanced_softmax,
drw), steps | epochs, batch_size, lr, momentum, weight_decay, milestones, warmup, la_tau, drw_start,
drw_beta, ema_decay, augment, radius, radius_quantile, synthetic_uri, synthetic_weight,
synthetic_max_per_class, synthetic_fill_to; filter.keep, filter.apply (see --list-keys)."""


def body(cfg, run, args) -> dict:
    import numpy as np
    import torch

    from ltaug.classify import (IdAidOodFilter, load_classifier, load_synthetic, select_synthetic, shares,
                                train_classifier)
    from ltaug.data import load_dataset
    from ltaug.eval import evaluate_classifier
    from ltaug.eval import plots
    from ltaug.train import LocalWorld

    c = cfg.classifier
    torch.manual_seed(cfg.seed)
    data = load_dataset(cfg.data)
    device = "cuda" if (cfg.resources.use_gpu and torch.cuda.is_available()) else "cpu"
    world = LocalWorld(device, on_report=lambda m, step, ckpt: run.tracker.log_metrics(m, step))
    summary: dict = {}
    baseline = bank = None
    if c.checkpoint:
        baseline, bank = load_classifier(c.checkpoint, device)
    synthetic = None
    if c.synthetic_uri:
        synthetic = load_synthetic(c.synthetic_uri, data.train.image_size, data.train.channels,
                                   data.num_classes, cfg.data.on_bad_record)
        summary["synthetic_read"] = len(synthetic)
        if baseline is not None and bank is not None and len(synthetic):
            scored = IdAidOodFilter(baseline, bank, cfg.filter.keep, drop=False, batch_size=c.eval_batch_size)(
                {"image": synthetic.images, "label": synthetic.labels})
            summary["synthetic_shares"] = shares(scored["category"])
            plots.distance_histogram(scored["distance"], bank.radii.cpu().numpy()[synthetic.labels],
                                     scored["category"], run.local("id_aid_ood.png"))
            run.publish(run.local("id_aid_ood.png"), "id_aid_ood.png")
            if cfg.filter.apply:
                synthetic = synthetic.subset(np.where(scored["keep"])[0])
                summary["synthetic_after_filter"] = len(synthetic)
        elif cfg.filter.apply:
            raise ValueError("filter.apply=true needs classifier.checkpoint (a baseline with a feature bank)")
        synthetic = select_synthetic(synthetic, data.train.counts, c.synthetic_max_per_class, c.synthetic_fill_to,
                                     torch.Generator().manual_seed(cfg.seed))

    if cfg.resources.num_workers >= 1:  # Ray Train (DDP): the same pure training function on every worker
        from types import SimpleNamespace

        from ltaug.distributed.train import classifier_train_fn, run_training

        fn = (lambda c_, w_, d_: classifier_train_fn(c_, w_, d_, synthetic=synthetic)) if synthetic is not None else None
        out = run_training(cfg, run, "classifier", train_fn=fn)
        model, _ = load_classifier(out["checkpoint"], device)
        result = SimpleNamespace(model=model, checkpoint=out["checkpoint"], steps=out["step"],
                                 num_real=out["num_real"], num_synthetic=out["num_synthetic"])
        summary["world_size"] = out["world_size"]
    else:
        result = train_classifier(cfg, data, world, ckpt_dir=run.path("checkpoints"), synthetic=synthetic)
    report = evaluate_classifier(result.model, data.test, data.groups, c.eval_batch_size)
    K = data.num_classes
    summary.update({"checkpoint": result.checkpoint, **{k: report[k] for k in ("acc_all", "acc_many", "acc_medium", "acc_few")},
                    "per_class": report["per_class"], "groups": data.groups, "steps": result.steps,
                    "num_real": result.num_real, "num_synthetic": result.num_synthetic})
    run.tracker.log_metrics({k: v for k, v in summary.items() if k.startswith("acc_") and v is not None})

    baseline_pc = None
    if baseline is not None:
        base = evaluate_classifier(baseline, data.test, data.groups, c.eval_batch_size)
        baseline_pc = base["per_class"]
        summary.update({f"baseline_{k}": base[k] for k in ("acc_all", "acc_many", "acc_medium", "acc_few")})

    real_counts = data.train.counts.as_array()
    syn_counts = (np.bincount(synthetic.labels, minlength=K) if synthetic is not None else None)
    with open(run.local("confusion.json"), "w") as fh:
        json.dump({"confusion": report["confusion"], "rows": "true class", "cols": "predicted class"}, fh)
    run.publish(run.local("confusion.json"), "confusion.json")
    made = [plots.confusion_matrix_plot(report["confusion"], run.local("confusion.png")),
            plots.class_histogram(real_counts, run.local("class_histogram.png"), syn_counts, data.train.class_names,
                                  "train images per class" + (" (real + synthetic)" if syn_counts is not None else "")),
            plots.per_class_accuracy(report["per_class"], run.local("per_class_accuracy.png"), baseline_pc, data.groups),
            plots.sample_grid(data.train.images, data.train.labels, run.local("samples_real.png"), K,
                              cfg.eval.grid_per_class, "real (long-tailed train set)")]
    if synthetic is not None and len(synthetic) >= 2:
        summary["generative"] = _generative(cfg, run, data, synthetic, baseline or result.model, bank)
    if synthetic is not None and len(synthetic):
        made.append(plots.sample_grid(synthetic.images, synthetic.labels, run.local("samples_synthetic.png"), K,
                                      cfg.eval.grid_per_class, "synthetic"))
    for p in made:
        run.publish(p, os.path.basename(p))
    return summary


def _generative(cfg, run, data, synthetic, classifier, bank) -> dict:
    """Generative metrics of the synthetic set against the balanced test set (features: eval.features)."""
    import torch

    from ltaug.eval import evaluate_generated, make_feature_space

    space = make_feature_space(cfg.eval, classifier=classifier, device=next(classifier.parameters()).device)
    (rx, ry), (fx, fy) = data.test.tensors(), synthetic.tensors()
    rep = evaluate_generated(space, rx, ry, fx, fy, data.num_classes, data.groups, cfg.eval.knn_k,
                             cfg.eval.kid_subsets, cfg.eval.kid_subset_size, torch.Generator().manual_seed(cfg.seed),
                             bank=bank, bank_space=make_feature_space(cfg.eval, classifier=classifier) if bank is not None else None)
    rep["reference"] = "balanced test set"
    rep["features"] = cfg.eval.features
    run.write_json("generative.json", rep)
    keys = ("fid", "kid", "precision", "recall", "density", "coverage", "fid_many", "fid_medium", "fid_few",
            "avg_knn", "lof", "rarity")
    run.tracker.log_metrics({f"gen_{k}": rep[k] for k in keys if isinstance(rep.get(k), float)})
    return {k: rep.get(k) for k in keys}


def main(argv=None) -> int:
    return job_main("train_classifier", DESCRIPTION, body, argv)


if __name__ == "__main__":
    sys.exit(main())
