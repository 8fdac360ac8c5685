"""Evaluate a diffusion checkpoint (model.checkpoint) with the standard generative protocol, and/or a classifier
checkpoint (classifier.checkpoint). Both given: both evaluations in one run. Writes summary.json; prints the run
dir last.

model.checkpoint (a .pt file or checkpoints/ directory): eval.num_per_class class-uniform samples per class
with the config's sampler (sample.*) and guidance (guidance.*), saved as samples.npz (images uint8, labels),
compared class by class with the real *training* images of the class (topped up with its validation images
below eval.min_real_per_class) in an evaluation feature space that takes no part in training or filtering:
eval.features=auto|inception|evalnet (auto: Inception-v3 from the local eval.inception_weights file when set,
else the evalnet, a classifier trained once on all training images of the source, class-balanced, cached under
the data cache dir). evaluation.json reports fid, kid, fid_many/medium/few, per_class (fid, precision, recall,
density, coverage), precision, recall, density, coverage, cas_acc (a classifier trained on the samples only,
eval.cas_steps steps, tested on the real test set), class_consistency (the evalnet's top-1 on the samples'
labels), near_copy_rate (+ per class: samples whose nearest training image is as close as the 1st percentile
of the test images' nearest-training distances, L2 in [0,1] pixels), avg_knn, lof, rarity.

classifier.checkpoint: top-1 All / Many / Medium / Few on the balanced test set, per class, confusion, val_acc_*;
with classifier.synthetic_uri also the protocol's metrics of those shards.

    python jobs/evaluate.py --config configs/quickstart.yaml --set model.checkpoint=runs/train_diffusion-XXXX/checkpoints
    python jobs/evaluate.py --config configs/quickstart.yaml --set classifier.checkpoint=runs/train_classifier-XXXX/checkpoints
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # ray job submit --working-dir .

from ltaug.cli import job_main  # noqa: E402
from ltaug.stages.evaluate import evaluate  # noqa: E402


def body(cfg, run, launcher, args) -> dict:
    return evaluate(cfg, run, launcher)


if __name__ == "__main__":
    sys.exit(job_main("evaluate", __doc__, body))
