"""Train a classifier on the long-tailed train set (optionally + synthetic shards, weighted by omega), save
the checkpoint with its feature bank, and evaluate top-1 on the balanced test set (All / Many / Medium / Few).

summary.json: checkpoint, acc_all, acc_many, acc_medium, acc_few, per_class, confusion (+ num_real,
num_synthetic, steps, world_size; baseline_* when classifier.checkpoint is given; synthetic_shares (ID/AID/OOD)
when a baseline scores the synthetic set; generative: FID/KID/precision/recall/density/coverage/group
FID/AvgkNN/LOF/rarity of the synthetic set against the balanced test set in eval.features space).
Artifacts: confusion.json, confusion.png, class_histogram.png, per_class_accuracy.png, samples_real.png
(+ samples_synthetic.png, generative.json with synthetic data; id_aid_ood.png with a baseline too).

examples:
  python jobs/train_classifier.py --config configs/quickstart.yaml
  python jobs/train_classifier.py --set classifier.method=balanced_softmax --set classifier.steps=500
  python jobs/train_classifier.py --set classifier.synthetic_uri=runs/gen/shards --set classifier.synthetic_weight=0.3 \\
      --set classifier.checkpoint=runs/baseline/checkpoints --set filter.apply=true
  CIFAR-LT recipe: --set classifier.epochs=200 --set classifier.batch_size=128 --set classifier.warmup=0.025

classifier keys: checkpoint, arch (resnet20/32/56, resnet10/18/50), method (ce, resample, balanced_softmax,
drw), steps | epochs, batch_size, lr, momentum, weight_decay, milestones, warmup, la_tau, drw_start, drw_beta,
ema_decay, augment, radius, radius_quantile, synthetic_uri, synthetic_weight, synthetic_max_per_class,
synthetic_fill_to; filter.keep, filter.apply (see --list-keys)."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # ray job submit --working-dir .

from ltaug.cli import job_main  # noqa: E402
from ltaug.stages import train_classifier  # noqa: E402


def body(cfg, run, launcher, args) -> dict:
    return train_classifier(cfg, run, launcher)


def main(argv=None) -> int:
    return job_main("train_classifier", __doc__, body, argv)


if __name__ == "__main__":
    sys.exit(main())
