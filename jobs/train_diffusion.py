"""Train the class-conditional diffusion model (UNet + CompositeLoss: mse, cbdm, aid, infonce, cond_uncond)
on the configured long-tailed train set: in-process (resources.num_workers=0) or with Ray Train DDP on
resources.num_workers workers. Resumes from the run's checkpoints (also on a different worker count).
Writes sample grids and summary.json (checkpoint, steps, final_loss, final_losses, grids); prints the run dir last.

    python jobs/train_diffusion.py --config configs/quickstart.yaml
    python jobs/train_diffusion.py --config configs/quickstart.yaml --set train.steps=500 --set loss.cbdm=0
    python jobs/train_diffusion.py --config configs/quickstart.yaml \\
        --set loss.aid=0.1 --set classifier.checkpoint=runs/train_classifier-XXXX/checkpoints

Loss weights: loss.mse, loss.cbdm (tau), loss.aid (alpha; needs classifier.checkpoint), loss.infonce,
loss.cond_uncond; loss.label_drop is the classifier-free whole-batch label drop probability.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # ray job submit --working-dir .

from ltaug.cli import job_main  # noqa: E402
from ltaug.stages import train_diffusion  # noqa: E402


def body(cfg, run, launcher, args) -> dict:
    return train_diffusion(cfg, run, launcher)


if __name__ == "__main__":
    sys.exit(job_main("train_diffusion", __doc__, body))
