"""Sweep loss weights and guidance settings (resources.num_workers >= 1: Ray Tune with ASHA, one TorchTrainer
per trial; 0: the trials one after another in this process), one MLflow run per trial under this job's run,
and write the best config as a YAML preset (``best.yaml`` in the run dir) that every job accepts.

    python jobs/tune.py --config configs/quickstart.yaml --set classifier.checkpoint=runs/.../checkpoints \\
        --set 'tune.space={loss.cbdm: [0.5, 1.0], guidance.cfg.omega: [0.0, 1.0, 2.0]}' --set tune.num_samples=4
    python jobs/train_diffusion.py --config runs/tune-.../best.yaml
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # ray job submit --working-dir .

from ltaug.cli import job_main  # noqa: E402
from ltaug.stages import tune  # noqa: E402


def body(cfg, run, launcher, args) -> dict:
    out = tune(cfg, run, launcher)
    print(f"best {out['metric']} = {out['best_metric']:.4f} with {out['best_overrides']} "
          f"({out['num_trials']} trials, {out['errors']} errors); preset: {out['preset']}")
    return out


if __name__ == "__main__":
    sys.exit(job_main("tune", __doc__, body))
