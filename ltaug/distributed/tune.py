"""Ray Tune sweeps over loss weights and guidance settings (Train V2 driver-function pattern).

Each trial is a driver function that applies its sampled overrides to the job's config and runs a
``TorchTrainer`` (``resources.num_workers`` workers) named ``train-<trial id>`` (a restarted trial resumes
its Train run) with ``TuneReportCallback`` so Tune sees the metric. The worker trains the diffusion model in
``tune.reports`` chunks through the same ``train_diffusion`` the jobs use, and after each chunk rank 0
computes the objective:

- ``tail_fid``: FID between generated and real images of the *few* group, in the feature space of
  ``classifier.checkpoint`` (pixels when none is given), from ``tune.num_per_class`` images per class
  drawn with the trial's sampler and guidance.

ASHA stops weak trials early (``max_t`` is one more than the number of reports, so that no trial is
stopped merely for reaching the end). ``MLflowLoggerCallback`` logs one MLflow run per trial, nested
under the job's run. The best trial's config is written as a YAML preset that every job accepts.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from .. import storage
from ..config import Config, config_to_yaml, public_dict
from ..config.schema import apply_overrides, build

OBJECTIVE_MODE = {"tail_fid": "min", "few_acc": "max"}


def apply_space(cfg: Config, overrides: dict[str, Any]) -> Config:
    """``cfg`` with dotted-key overrides applied and re-validated (errors name the key)."""
    items = [f"{k}={_yaml_scalar(v)}" for k, v in overrides.items()]
    return build(Config, apply_overrides(public_dict(cfg), items))


def _yaml_scalar(v: Any) -> str:
    if isinstance(v, (np.floating, float)):
        return str(int(v)) if float(v).is_integer() else repr(float(v))   # ints also fit float fields
    if isinstance(v, (np.integer, int)) and not isinstance(v, bool):
        return str(int(v))
    return str(v)


def param_space(cfg: Config) -> dict[str, Any]:
    from ray import tune

    if not cfg.tune.space:
        raise ValueError("tune.space is empty: give dotted keys with candidate values, e.g. "
                         "--set 'tune.space={loss.cbdm: [0.5, 1.0], guidance.cfg.omega: [0.0, 1.0]}'")
    for k in cfg.tune.space:   # fail before Ray starts: every key must exist and every value be valid
        for v in cfg.tune.space[k]:
            apply_space(cfg, {k: v})
    pick = tune.grid_search if cfg.tune.search == "grid" else tune.choice
    return {"overrides": {k: pick(list(v)) for k, v in cfg.tune.space.items()}}


# ------------------------------------------------------------------------------------------ objective


def tail_fid(cfg: Config, ckpt_uri: str, data, device) -> float:
    """FID of the few group: ``tune.num_per_class`` generated images per few class vs the real ones."""
    import torch

    from ..eval import fid
    from ..generate import GenerationPlan, GeneratorSpec, ImageGenerator

    few = data.groups.get("few") or list(range(data.num_classes))
    budget = [cfg.tune.num_per_class if c in few else 0 for c in range(data.num_classes)]
    plan = GenerationPlan(tuple(budget), cfg.generate.seed, max(1, sum(budget)))
    spec = GeneratorSpec.from_config(apply_space(cfg, {"model.checkpoint": ckpt_uri}), device=str(device))
    spec = GeneratorSpec(**{**spec.__dict__, "minority_score": False})
    gen = ImageGenerator(spec)
    rows = plan.rows(np.arange(plan.total))
    fake = np.concatenate([gen({k: v[a:a + cfg.generate.batch_size] for k, v in rows.items()})["image"]
                           for a in range(0, plan.total, cfg.generate.batch_size)])
    real = data.train.images[np.isin(data.train.labels, few)]
    to_x = lambda im: torch.from_numpy(im).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # noqa: E731
    if cfg.classifier.checkpoint:
        from ..classify import extract_features, load_classifier

        clf, _ = load_classifier(cfg.classifier.checkpoint, device)
        feats = lambda im: extract_features(clf, to_x(im).to(device)).cpu().numpy()  # noqa: E731
    else:
        feats = lambda im: to_x(im).flatten(1).numpy()  # noqa: E731
    return float(fid(feats(real), feats(fake)))


class _QuietWorld:
    """Forwards a RayWorld but swallows the loop's reports (the tune worker reports once per chunk)."""

    def __init__(self, world) -> None:
        self._w = world
        self.rank, self.world_size, self.device = world.rank, world.world_size, world.device

    @property
    def is_main(self) -> bool:
        return self._w.is_main

    def wrap(self, model):
        return self._w.wrap(model)

    def all_reduce_mean(self, value):
        return self._w.all_reduce_mean(value)

    def report(self, metrics, step, checkpoint_dir=None) -> None:
        self.last = dict(metrics)


def _tune_worker(config: dict) -> None:
    import ray.train

    from ..data import load_dataset
    from ..diffusion import train_diffusion
    from .train import RayWorld

    cfg: Config = config["cfg"]
    world = RayWorld()
    quiet = _QuietWorld(world)
    data = load_dataset(cfg.data)
    total = cfg.tune.train_steps or cfg.train.steps
    R = cfg.tune.reports
    for r in range(1, R + 1):
        steps = max(1, round(total * r / R))
        c = apply_space(cfg, {"train.steps": steps, "train.ckpt_every": 0, "train.sample_every": 0})
        res = train_diffusion(c, data, quiet, config["ckpt_dir"], progress=False)
        metrics: dict[str, float] = {"step": float(res.step), **{k: float(v) for k, v in getattr(quiet, "last", {}).items()}}
        if world.is_main:
            metrics[cfg.tune.objective] = tail_fid(cfg, res.checkpoint, data, world.device)
        ray.train.report(metrics)


def _trial(config: dict, base: Config, work_dir: str) -> None:
    """Tune driver function: one TorchTrainer per trial, metrics forwarded by TuneReportCallback."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = apply_space(base, config["overrides"])
    trial_id = tune.get_context().get_trial_id()
    ckpt_dir = storage.join(work_dir, f"trial-{trial_id}", "checkpoints")
    fs, path = storage.pyarrow_fs(storage.join(work_dir, "train"))
    res = cfg.resources
    trainer = TorchTrainer(
        _tune_worker, train_loop_config={"cfg": cfg, "ckpt_dir": ckpt_dir},
        scaling_config=ray.train.ScalingConfig(num_workers=max(1, res.num_workers), use_gpu=res.use_gpu,
                                               resources_per_worker={"CPU": cfg.tune.trial_cpus}),
        run_config=ray.train.RunConfig(name=f"train-{trial_id}", storage_path=path, storage_filesystem=fs,
                                       failure_config=ray.train.FailureConfig(max_failures=res.max_failures),
                                       callbacks=[TuneReportCallback()]))
    trainer.fit()


def run_tune(cfg: Config, run) -> dict[str, Any]:
    """Sweep ``cfg.tune.space``; return the best overrides, its metric and the preset URI."""
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler

    from .runtime import ensure_ray

    if cfg.tune.objective != "tail_fid":
        raise ValueError(f"tune.objective={cfg.tune.objective!r} is not available in this version; use tail_fid")
    space = param_space(cfg)
    ensure_ray(cfg.resources, dashboard=True)   # Train-in-Tune with ASHA needs the dashboard (placement-group cleanup)
    metric, mode = cfg.tune.objective, OBJECTIVE_MODE[cfg.tune.objective]
    work_dir = storage.join(run.dir, "tune")
    if not storage.is_remote(work_dir):
        os.makedirs(work_dir, exist_ok=True)
    callbacks = []
    uri = getattr(run.tracker, "uri", None)
    if uri and run.tracker.run_id:
        callbacks.append(MLflowLoggerCallback(tracking_uri=uri, experiment_name=run.tracker.experiment,
                                              tags={"mlflow.parentRunId": run.tracker.run_id, "ltaug.job": "tune_trial"}))
    fs, path = storage.pyarrow_fs(storage.join(work_dir, "tuner"))
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trial, base=cfg, work_dir=work_dir), {"CPU": 0.25}),
        param_space=space,
        tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=cfg.tune.num_samples,
                                    max_concurrent_trials=cfg.tune.max_concurrent,
                                    scheduler=ASHAScheduler(max_t=cfg.tune.reports + 1,
                                                            grace_period=cfg.tune.grace_period),
                                    time_budget_s=cfg.tune.time_budget_s or None),
        run_config=tune.RunConfig(name=os.path.basename(run.dir.rstrip("/")) + "-tune", storage_path=path,
                                  storage_filesystem=fs, callbacks=callbacks))
    grid = tuner.fit()
    best = grid.get_best_result(metric=metric, mode=mode)
    if best.metrics is None or metric not in best.metrics:
        raise ValueError(f"no trial reported {metric}; errors: {[str(e)[:300] for e in grid.errors]}")
    overrides = dict(best.config["overrides"])
    best_cfg = apply_space(cfg, overrides)
    preset = cfg.tune.preset_uri or run.path("best.yaml")
    header = (f"# ltaug tune preset: best of {len(grid)} trials by {metric} ({mode}) = {best.metrics[metric]:.6g}\n"
              f"# overrides: {overrides}\n")
    storage.write_text(preset, header + config_to_yaml(best_cfg))
    trials = [{"overrides": r.config.get("overrides"), metric: (r.metrics or {}).get(metric),
               "iterations": (r.metrics or {}).get("training_iteration")} for r in grid]
    return {"best_overrides": overrides, "best_metric": float(best.metrics[metric]), "metric": metric, "mode": mode,
            "preset": preset, "trials": trials, "num_trials": len(grid), "errors": grid.num_errors}


__all__ = ["run_tune", "apply_space", "param_space", "tail_fid"]
