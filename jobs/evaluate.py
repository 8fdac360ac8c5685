"""Evaluate a trained classifier (classifier.checkpoint: a .pt file or a checkpoints/ directory) on the balanced
test set: top-1 All / Many / Medium / Few, per class, confusion; with classifier.synthetic_uri also the
generative metrics of those shards against the balanced test set. Writes summary.json; prints the run dir last.

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
