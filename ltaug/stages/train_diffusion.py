"""Stage: train the class-conditional diffusion model (``train_diffusion`` of the core) on any launcher.

The one worker function below runs in-process (``LocalLauncher``) and on every Ray Train worker alike:
same dataset artifact, same frozen classifier feature space (``loss.aid > 0``), same checkpoint
resolution, same sample grids and the same summary keys.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any

import hashlib

import torch

from .. import storage
from ..config import Config, with_values
from ..data import to_uint8
from ..diffusion import train_diffusion as fit_diffusion
from ..diffusion.aid import calibrate, calibration_batch, quantile_radii
from ..diffusion.io import classifier_feature_space, needs_classifier, save_grid_png
from ..diffusion.losses import TERMS, SimpleFeatureSpace
from ..diffusion.schedule import NoiseSchedule
from ..diffusion.train import GRID_PER_CLASS, build_model, load_diffusion
from ..train.checkpoint import CheckpointError
from ..track import Tracker
from ..train import World
from .data import stage_data, worker_data
from .checks import check_classifier_fits
from .launcher import Launcher, Task
from .run import Run


def diffusion_worker(task: Task, world: World, tracker: Tracker) -> dict[str, Any]:
    """Train on ``task.data_uri`` into ``task.ckpt_dir``; rank 0 writes sample grids into the run dir (the
    stage logs them to the tracker from the driver)."""
    cfg = task.cfg
    data = worker_data(task.data_uri)
    space = aid_feature_space(cfg, data, world.device)
    if space is None and needs_classifier(cfg):   # the minority classifier distance of the sample grids
        space = classifier_feature_space(cfg.classifier.checkpoint, world.device)
    calib_batch = calib = None
    if space is not None and cfg.loss.aid > 0 and world.is_main:
        x0, y = data.train.tensors()
        calib_batch = calibration_batch(x0, y, cfg.diffusion.timesteps, cfg.seed)
        calib = {"init": _calibrate(cfg, data, space, calib_batch, _initial_model(cfg, data.train, world.device))}
    grids: list[str] = []

    def on_grid(step: int, images) -> None:
        name = f"grid-{step:09d}.png"
        with tempfile.TemporaryDirectory() as d:
            p = save_grid_png(to_uint8(images), os.path.join(d, name), nrow=GRID_PER_CLASS, scale=2)
            uri = storage.join(task.run_dir, "samples", name)
            with open(p, "rb") as fh:
                storage.write_bytes(uri, fh.read())
            grids.append(uri)      # the stage logs the run dir's grids from the driver: workers never log

    res = fit_diffusion(cfg, data, world, task.ckpt_dir, feature_space=space,
                        on_grid=on_grid, progress=world.is_main)
    last = res.history[-1] if res.history else {}
    out = {"checkpoint": res.checkpoint, "steps": res.step, "resumed_from": res.resumed_from,
           "final_loss": last.get("loss"), "final_losses": {k: v for k, v in last.items() if k.startswith("loss")},
           "grids": grids, "history": res.history[-20:]}
    if calib is not None:
        trained = load_diffusion(res.checkpoint, world.device, use_ema=False).model
        calib["final"] = _calibrate(cfg, data, space, calib_batch, trained)
        out["aid_calibration"] = calib
    return out


# ------------------------------------------------------------------------------------------------
# AID: the loss's feature space (the filter's classifier or its own) and its calibration
# ------------------------------------------------------------------------------------------------
def aid_feature_space(cfg: Config, data, device) -> SimpleFeatureSpace | None:
    """The AID loss's frozen feature space (None when ``loss.aid == 0``): ``classifier.checkpoint``
    (``loss.aid_features=filter``) or ``loss.aid_checkpoint`` (``own``; resolved by the driver), with
    ``id_radii`` from ``loss.aid_radius_quantile`` when set."""
    if cfg.loss.aid <= 0:
        return None
    uri = cfg.loss.aid_checkpoint if cfg.loss.aid_features == "own" else cfg.classifier.checkpoint
    space = classifier_feature_space(uri, device)
    if cfg.loss.aid_radius_quantile > 0:
        x0, y = data.train.tensors()
        space.id_radii = quantile_radii(space, x0, y, data.train.num_classes, cfg.loss.aid_radius_quantile)
    return space


def _initial_model(cfg: Config, train, device) -> torch.nn.Module:
    """The network ``train_diffusion`` starts from (same seed, same construction)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, train.channels, train.image_size, train.num_classes)
    return model.to(device)


def _calibrate(cfg: Config, data, space, batch, model) -> dict[str, Any]:
    term = TERMS["aid"](cfg.loss, space)
    return calibrate(model, NoiseSchedule.from_config(cfg.diffusion), term, batch, data.train.num_classes,
                     cfg.loss.aid)


def file_digest(uri: str) -> str:
    """sha256 (16 hex digits) of a checkpoint file's bytes."""
    return hashlib.sha256(storage.read_bytes(uri)).hexdigest()[:16]


def _check_aid_checkpoint(cfg: Config, uri: str, data) -> str:
    try:
        return check_classifier_fits("loss.aid_checkpoint", uri, data)
    except (CheckpointError, OSError, LookupError) as e:
        raise CheckpointError(f"loss.aid_checkpoint={uri}: {storage.describe_error(e)}") from None


def own_aid_features(cfg: Config, run: Run, launcher: Launcher, data) -> tuple[Config, dict[str, Any]]:
    """``loss.aid_features=own``: ``loss.aid_checkpoint`` checked, or a classifier trained on the real train
    split (child run ``aid-features``: seed + 1, ``loss.aid_arch``, plain CE, no synthetic data) so the
    loss's feature network is not the filter's. Returns the config pointing at it and the summary entry."""
    from .train_classifier import train_classifier   # lazy: the classifier stage is only needed here

    info: dict[str, Any] = {"source": "own"}
    uri = cfg.loss.aid_checkpoint
    if not uri:
        ccfg = with_values(cfg, {"seed": cfg.seed + 1, "classifier.arch": cfg.loss.aid_arch, "classifier.method": "ce",
                                 "classifier.checkpoint": "", "classifier.synthetic_uri": "", "filter.apply": False})
        child = run.child("aid-features", ccfg)
        status = "FAILED"
        try:
            trained = train_classifier(ccfg, child, launcher, extras=False)
            child.write_json("summary.json", {k: v for k, v in trained.items() if k not in ("confusion", "per_class")})
            status = "FINISHED"
        finally:
            child.tracker.close(status)
        uri = trained["checkpoint"]
        info.update({"trained": True, "arch": cfg.loss.aid_arch, "seed": cfg.seed + 1,
                     "val_acc_all": trained.get("val_acc_all"), "acc_all": trained.get("acc_all")})
    uri = _check_aid_checkpoint(cfg, uri, data)
    info.update({"checkpoint": uri, "digest": file_digest(uri)})
    if cfg.classifier.checkpoint:
        filt = check_classifier_fits("classifier.checkpoint", cfg.classifier.checkpoint, data)
        info["filter_digest"] = file_digest(filt)
        if info["filter_digest"] == info["digest"]:
            raise ValueError(f"loss.aid_checkpoint={uri} is the filter's classifier.checkpoint (same sha256 "
                             f"{info['digest']}); with loss.aid_features=own give a different classifier, or set "
                             f"loss.aid_features=filter")
    return with_values(cfg, {"loss.aid_checkpoint": uri}), info


def train_diffusion(cfg: Config, run: Run, launcher: Launcher, *, ckpt_dir: str | None = None) -> dict[str, Any]:
    """summary: checkpoint, steps, resumed_from, world_size, final_loss, final_losses, grids, history (the last
    20 logged windows), dataset; with ``loss.aid > 0`` also ``aid_features`` (source filter|own, checkpoint, its
    sha256 digest, the filter's digest) and ``aid_calibration {init, final}`` (``ltaug.diffusion.aid``)."""
    data, data_uri = stage_data(cfg)
    aid: dict[str, Any] = {}
    if cfg.loss.aid > 0 and cfg.loss.aid_features == "own":
        cfg, aid = own_aid_features(cfg, run, launcher, data)
    filter_aid = cfg.loss.aid > 0 and cfg.loss.aid_features == "filter"
    minority_clf = cfg.guidance.minority.scale > 0 and cfg.guidance.minority.distance == "classifier"
    if filter_aid or minority_clf:     # checked here, before any worker starts
        if not cfg.classifier.checkpoint:
            raise ValueError("classifier.checkpoint is required for loss.aid > 0 with loss.aid_features=filter, or "
                             "guidance.minority.distance=classifier")
        uri = check_classifier_fits("classifier.checkpoint", cfg.classifier.checkpoint, data)
        if filter_aid:
            aid = {"source": "filter", "checkpoint": uri, "digest": file_digest(uri)}
    task = Task("diffusion", cfg, data_uri, ckpt_dir or run.path("checkpoints"), run.dir)
    out = launcher.train(diffusion_worker, task, run.tracker)
    for uri in storage.listdir(run.path("samples"), ".png"):   # every attempt's grids, also across a restart
        run.log_uri(uri, "samples")
    run.log_uri(out["checkpoint"], "checkpoints")   # runs:/<run id>/checkpoints/ckpt-XXXXXXXXX.pt
    if aid:
        out["aid_features"] = aid
    return {**out, "dataset": data_uri}


__all__ = ["train_diffusion", "diffusion_worker"]
