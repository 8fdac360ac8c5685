"""Stage: sweep loss weights and guidance settings; write the best config as a YAML preset.

Each trial applies its overrides to the config (the one validated override path, ``with_values``) and
trains the diffusion model in ``tune.reports`` chunks through the same core ``train_diffusion`` the
jobs use; after each chunk rank 0 computes the objective and every rank reports (the Ray launcher hands
the reports to Ray Tune / ASHA, the local launcher runs the trials one after another).

- ``tail_fid``: FID between generated and real images of the *few* group, in the feature space of
  ``classifier.checkpoint`` (pixels when none is given), from ``tune.num_per_class`` images per class.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from .. import storage
from ..config import Config, ConfigError, config_to_yaml, with_values
from ..diffusion import train_diffusion as fit_diffusion
from ..train import World
from .data import stage_data, worker_data
from .launcher import Launcher, Task, TrialSpace
from .run import Run

OBJECTIVE_MODE = {"tail_fid": "min", "few_acc": "max"}


def trial_space(cfg: Config) -> TrialSpace:
    """``tune.space`` checked before any work: every key must exist and every value be valid."""
    if not cfg.tune.space:
        raise ConfigError("tune.space is empty: give dotted keys with candidate values, e.g. "
                          "--set 'tune.space={loss.cbdm: [0.5, 1.0], guidance.cfg.omega: [0.0, 1.0]}'")
    if cfg.tune.objective not in ("tail_fid",):
        raise ConfigError(f"tune.objective={cfg.tune.objective!r} is not available in this version; use tail_fid")
    space = {k: tuple(_plain(v) for v in vals) for k, vals in cfg.tune.space.items()}
    for k, vals in space.items():
        for v in vals:
            with_values(cfg, {k: v})
    return TrialSpace(space, cfg.tune.search, cfg.tune.num_samples, cfg.tune.objective,
                      OBJECTIVE_MODE[cfg.tune.objective], cfg.seed)


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def tail_fid(cfg: Config, ckpt_uri: str, data, device) -> float:
    """FID of the few group: ``tune.num_per_class`` generated images per few class vs the real ones."""
    from ..eval import fid
    from ..generate import GenerationPlan, ImageGenerator

    few = data.groups.get("few") or list(range(data.num_classes))
    budget = [cfg.tune.num_per_class if c in few else 0 for c in range(data.num_classes)]
    plan = GenerationPlan(tuple(budget), cfg.generate.seed, max(1, sum(budget)))
    gen = ImageGenerator(with_values(cfg, {"generate.minority_score": False}), ckpt_uri, device)
    rows = plan.rows(np.arange(plan.total))
    bs = cfg.generate.batch_size
    fake = np.concatenate([gen({k: v[a:a + bs] for k, v in rows.items()})["image"] for a in range(0, plan.total, bs)])
    real = data.train.images[np.isin(data.train.labels, few)]
    to_x = lambda im: torch.from_numpy(np.asarray(im)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # noqa: E731
    if cfg.classifier.checkpoint:
        from ..classify import extract_features, load_classifier

        clf, _ = load_classifier(cfg.classifier.checkpoint, device)
        feats = lambda im: extract_features(clf, to_x(im).to(device)).cpu().numpy()  # noqa: E731
    else:
        feats = lambda im: to_x(im).flatten(1).numpy()  # noqa: E731
    return float(fid(feats(real), feats(fake)))


class QuietWorld:
    """Forwards a World but keeps the loop's own reports (a trial reports once per chunk, with its objective)."""

    def __init__(self, world: World) -> None:
        self._w = world
        self.rank, self.world_size, self.device = world.rank, world.world_size, world.device
        self.last: dict[str, float] = {}

    @property
    def is_main(self) -> bool:
        return self._w.is_main

    def wrap(self, model):
        return self._w.wrap(model)

    def all_reduce_mean(self, value):
        return self._w.all_reduce_mean(value)

    def all_gather(self, value):
        return self._w.all_gather(value)

    def report(self, metrics, step, checkpoint_dir=None) -> None:
        self.last = dict(metrics)


def tune_trial(task: Task, world: World, report: Callable[[dict[str, float]], None]) -> None:
    """One trial: ``tune.reports`` chunks of diffusion training, the objective after each (rank 0)."""
    cfg = task.cfg
    quiet = QuietWorld(world)
    data = worker_data(task.data_uri)
    total = cfg.tune.train_steps or cfg.train.steps
    R = cfg.tune.reports
    for r in range(1, R + 1):
        steps = max(1, round(total * r / R))
        c = with_values(cfg, {"train.steps": steps, "train.ckpt_every": 0, "train.sample_every": 0})
        res = fit_diffusion(c, data, quiet, task.ckpt_dir, progress=False)
        metrics: dict[str, float] = {"step": float(res.step), **{k: float(v) for k, v in quiet.last.items()}}
        if world.is_main:
            metrics[cfg.tune.objective] = tail_fid(cfg, res.checkpoint, data, world.device)
        report(metrics)


def tune(cfg: Config, run: Run, launcher: Launcher) -> dict[str, Any]:
    """summary: best_overrides, best_metric, metric, mode, preset (YAML URI), trials, num_trials, errors."""
    space = trial_space(cfg)
    _, data_uri = stage_data(cfg)
    task = Task("tune", cfg, data_uri, run.path("tune", "checkpoints"), run.dir)
    trials = launcher.sweep(tune_trial, task, space, run.tracker)
    metric, mode = space.metric, space.mode
    scored = [t for t in trials if t.error is None and metric in t.metrics]
    if not scored:
        raise ValueError(f"no trial reported {metric}; errors: {[t.error for t in trials if t.error][:3]}")
    pick = min if mode == "min" else max
    best = pick(scored, key=lambda t: t.metrics[metric])
    best_cfg = with_values(cfg, best.overrides)
    preset = cfg.tune.preset_uri or run.path("best.yaml")
    header = (f"# ltaug tune preset: best of {len(trials)} trials by {metric} ({mode}) = {best.metrics[metric]:.6g}\n"
              f"# overrides: {best.overrides}\n")
    storage.write_text(preset, header + config_to_yaml(best_cfg))
    out = {"best_overrides": best.overrides, "best_metric": float(best.metrics[metric]), "metric": metric,
           "mode": mode, "preset": preset, "num_trials": len(trials), "errors": sum(t.error is not None for t in trials),
           "trials": [{"overrides": t.overrides, metric: t.metrics.get(metric), "iterations": t.reports,
                       "error": t.error} for t in trials], "dataset": data_uri}
    run.tracker.log_metrics({f"best_{metric}": out["best_metric"], "trials": len(trials)})
    run.tracker.set_tags({"ltaug.best_overrides": str(best.overrides)})
    return out


__all__ = ["tune", "tune_trial", "trial_space", "tail_fid", "QuietWorld", "OBJECTIVE_MODE"]
