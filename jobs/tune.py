"""Sweep loss weights and guidance settings with Ray Tune (ASHA), one MLflow run per trial under this job's
run, and write the best config as a YAML preset (``best.yaml`` in the run dir) that every job accepts.

    python jobs/tune.py --config configs/quickstart.yaml --set classifier.checkpoint=runs/.../checkpoints \\
        --set 'tune.space={loss.cbdm: [0.5, 1.0], guidance.cfg.omega: [0.0, 1.0, 2.0]}' --set tune.num_samples=4
    python jobs/train_diffusion.py --config runs/tune-.../best.yaml
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ltaug.cli import job_main  # noqa: E402


def body(cfg, run, args) -> dict:
    from ltaug.distributed.tune import run_tune

    out = run_tune(cfg, run)
    print(f"best {out['metric']} = {out['best_metric']:.4f} with {out['best_overrides']} "
          f"({out['num_trials']} trials, {out['errors']} errors); preset: {out['preset']}")
    run.tracker.log_metrics({f"best_{out['metric']}": out["best_metric"], "trials": out["num_trials"]})
    run.tracker.set_tags({"ltaug.best_overrides": str(out["best_overrides"])})
    return out


if __name__ == "__main__":
    sys.exit(job_main("tune", __doc__.split("\n\n")[0], body))
