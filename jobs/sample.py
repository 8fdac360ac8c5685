"""Sample `sample.num_per_class` images of every class (or of `sample.classes`) from the diffusion
checkpoint `model.checkpoint`, with the configured sampler (`sample.sampler` ddpm|ddim, `sample.steps`),
classifier-free guidance (`guidance.cfg.omega`) and minority self-guidance (`guidance.minority.scale`,
`guidance.minority.every`). Writes samples.npz (images uint8 NxHxWxC, labels, seeds) and a grid PNG
(one row per class); prints the run dir last. Image k depends only on its label and seed.

    python jobs/sample.py --config configs/quickstart.yaml --set model.checkpoint=runs/train_diffusion-XXXX/checkpoints
    python jobs/sample.py --config configs/quickstart.yaml --set model.checkpoint=ckpt.pt \\
        --set sample.sampler=ddpm --set sample.steps=250 --set guidance.minority.scale=0.4
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # ray job submit --working-dir .

from ltaug.cli import job_main  # noqa: E402
from ltaug.stages.sample import sample_images  # noqa: E402


def body(cfg, run, launcher, args) -> dict:
    return sample_images(cfg, run, launcher)


if __name__ == "__main__":
    sys.exit(job_main("sample", __doc__, body))
