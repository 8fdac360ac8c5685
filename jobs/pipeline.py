"""Run everything end to end, each stage as its own MLflow run under one parent: baseline classifier
(+ feature bank) -> classical long-tail baselines -> diffusion training -> generation with ID/AID/OOD
filtering into shards -> downstream classifier on real + synthetic -> evaluation and a Markdown report.

    python jobs/pipeline.py --config configs/quickstart.yaml
    python jobs/pipeline.py --config configs/mnist-lt.yaml --set data.root=../shared/data/mnist

Skip stages by pointing at existing outputs: --set classifier.checkpoint=... (baseline),
--set model.checkpoint=... (diffusion), --set pipeline.shards=... (generation). Re-running the same
config resumes in the same run directory. summary.json: baseline, augmented, classical.<method>
({acc_all, acc_many, acc_medium, acc_few, per_class}), generation {requested, written, id, aid, ood},
mlflow_run_ids, checkpoints, report (report.md with plots).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # ray job submit --working-dir .

from ltaug.cli import job_main  # noqa: E402
from ltaug.stages import pipeline  # noqa: E402


def body(cfg, run, launcher, args) -> dict:
    return pipeline(cfg, run, launcher)


if __name__ == "__main__":
    sys.exit(job_main("pipeline", __doc__, body))
