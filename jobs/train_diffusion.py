"""Train the class-conditional diffusion model (UNet + CompositeLoss: mse, cbdm, aid, infonce, cond_uncond)
on the configured long-tailed train set: in-process (resources.num_workers=0) or with Ray Train DDP on
resources.num_workers workers. Resumes from the run's checkpoints (also on a different worker count).
Writes periodic sample grids and summary.json (with `checkpoint`); prints the run dir last.

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

from ltaug.cli import job_main
from ltaug.data import load_dataset, to_uint8
from ltaug.diffusion import train_diffusion
from ltaug.diffusion.io import classifier_feature_space, needs_classifier, save_grid_png
from ltaug.diffusion.train import GRID_PER_CLASS
from ltaug.train import LocalWorld


def body(cfg, run, args) -> dict:
    data = load_dataset(cfg.data)
    world = LocalWorld("cuda" if cfg.resources.use_gpu else "cpu",
                       on_report=lambda m, step, _ck: run.tracker.log_metrics(m, step=step))
    space = classifier_feature_space(cfg.classifier.checkpoint, world.device) if needs_classifier(cfg) else None
    grids = []

    def on_grid(step: int, images) -> None:
        name = f"samples/grid-{step:09d}.png"
        p = save_grid_png(to_uint8(images), run.local(name), nrow=GRID_PER_CLASS, scale=2)
        grids.append(run.publish(p, name, "samples"))

    if cfg.resources.num_workers >= 1:  # Ray Train (DDP), the same pure training function on every worker
        from ltaug.distributed.train import run_training

        out = run_training(cfg, run, "diffusion")
        last = out["history"][-1] if out.get("history") else {}
        return {"checkpoint": out["checkpoint"], "steps": out["step"], "resumed_from": out["resumed_from"],
                "world_size": out["world_size"], "final_loss": last.get("loss")}
    res = train_diffusion(cfg, data, world, run.path("checkpoints"), feature_space=space, on_grid=on_grid)
    last = res.history[-1] if res.history else {}
    return {"checkpoint": res.checkpoint, "steps": res.step, "resumed_from": res.resumed_from,
            "final_loss": last.get("loss"), "final_losses": {k: v for k, v in last.items() if k.startswith("loss")},
            "grids": grids, "world_size": 1}


if __name__ == "__main__":
    sys.exit(job_main("train_diffusion", __doc__.split("\n\n")[0], body))
