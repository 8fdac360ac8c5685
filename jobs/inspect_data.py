"""Inspect a dataset as configured: per-class train/test counts after the long-tail profile,
many/medium/few groups, a class histogram PNG. Writes summary.json; prints the run dir last.

    python jobs/inspect_data.py --config configs/quickstart.yaml
    python jobs/inspect_data.py --config configs/quickstart.yaml \\
        --set data.source=cifar10 --set data.root=s3://bucket/cifar-10-batches-py --set data.imbalance_ratio=100
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # ray job submit --working-dir .

from ltaug.cli import job_main  # noqa: E402
from ltaug.stages.inspect_data import inspect_data  # noqa: E402


def body(cfg, run, launcher, args) -> dict:
    return inspect_data(cfg, run, launcher)


if __name__ == "__main__":
    sys.exit(job_main("inspect_data", __doc__, body))
