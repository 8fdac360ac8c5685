"""Stage: train the class-conditional diffusion model (``train_diffusion`` of the core) on any launcher.

The one worker function below runs in-process (``LocalLauncher``) and on every Ray Train worker alike:
same dataset artifact, same frozen classifier feature space (``loss.aid > 0``), same checkpoint
resolution, same sample grids and the same summary keys.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any

from .. import storage
from ..config import Config
from ..data import to_uint8
from ..diffusion import train_diffusion as fit_diffusion
from ..diffusion.io import classifier_feature_space, needs_classifier, save_grid_png
from ..diffusion.train import GRID_PER_CLASS
from ..track import Tracker
from ..train import World
from .data import stage_data, worker_data
from .checks import check_classifier_fits
from .launcher import Launcher, Task
from .run import Run


def diffusion_worker(task: Task, world: World, tracker: Tracker) -> dict[str, Any]:
    """Train on ``task.data_uri`` into ``task.ckpt_dir``; rank 0 writes sample grids into the run dir."""
    cfg = task.cfg
    data = worker_data(task.data_uri)
    space = classifier_feature_space(cfg.classifier.checkpoint, world.device) if needs_classifier(cfg) else None
    grids: list[str] = []

    def on_grid(step: int, images) -> None:
        name = f"grid-{step:09d}.png"
        with tempfile.TemporaryDirectory() as d:
            p = save_grid_png(to_uint8(images), os.path.join(d, name), nrow=GRID_PER_CLASS, scale=2)
            uri = storage.join(task.run_dir, "samples", name)
            with open(p, "rb") as fh:
                storage.write_bytes(uri, fh.read())
            tracker.log_artifact(p, "samples")
            grids.append(uri)

    res = fit_diffusion(cfg, data, world, task.ckpt_dir, feature_space=space,
                        on_grid=on_grid, progress=world.is_main)
    last = res.history[-1] if res.history else {}
    return {"checkpoint": res.checkpoint, "steps": res.step, "resumed_from": res.resumed_from,
            "final_loss": last.get("loss"), "final_losses": {k: v for k, v in last.items() if k.startswith("loss")},
            "grids": grids, "history": res.history[-20:]}


def train_diffusion(cfg: Config, run: Run, launcher: Launcher, *, ckpt_dir: str | None = None) -> dict[str, Any]:
    """summary: checkpoint, steps, resumed_from, world_size, final_loss, final_losses, grids, history (the last
    20 logged windows), dataset."""
    data, data_uri = stage_data(cfg)
    if needs_classifier(cfg):          # AID / the classifier distance: checked here, before any worker starts
        check_classifier_fits("classifier.checkpoint", cfg.classifier.checkpoint, data)
    task = Task("diffusion", cfg, data_uri, ckpt_dir or run.path("checkpoints"), run.dir)
    out = launcher.train(diffusion_worker, task, run.tracker)
    run.log_uri(out["checkpoint"], "checkpoints")   # runs:/<run id>/checkpoints/ckpt-XXXXXXXXX.pt
    return {**out, "dataset": data_uri}


__all__ = ["train_diffusion", "diffusion_worker"]
