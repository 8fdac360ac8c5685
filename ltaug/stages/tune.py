"""Stage: sweep loss weights and guidance settings; write the best config as a YAML preset.

Each trial applies its overrides to the config (the one validated override path, ``with_values``) and
trains the diffusion model in ``tune.reports`` chunks through the same core ``train_diffusion`` the
jobs use; after each chunk rank 0 computes the objective and every rank reports ``step`` (the diffusion
training step: ASHA's time axis), ``resumed_from`` (the step this attempt of the trial started from: > 0
when it resumed from its own checkpoint) and the objective. The Ray launcher hands the reports to Ray Tune
/ ASHA, the local launcher runs the trials one after another; both restore an interrupted sweep when the
same run directory is run again (``restored`` in the summary, the trial ids kept).

- ``val_tail_fid``: FID between generated images of the *few* group and the few classes' **validation**
  images (``data.val_per_class``; never the training images, which a memorising model would match), in
  the feature space of ``classifier.checkpoint`` (pixels when none is given), from ``tune.num_per_class``
  generated images per class. ``tail_fid`` (against the training images) is retired: asking for it is an
  error naming the new objective. ``val_few_acc`` (a short downstream classifier) is not available yet.
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
from .tune_space import parse_space, require_optuna

OBJECTIVE_MODE = {"val_tail_fid": "min"}
RETIRED = {"tail_fid": "it compared generated images with the few *training* images, which rewards memorisation; "
                       "use tune.objective=val_tail_fid (the same FID against the validation images)",
           "few_acc": "use tune.objective=val_tail_fid (val_few_acc is not available yet)",
           "val_few_acc": "a short downstream classifier per trial is not available in this version; use "
                          "tune.objective=val_tail_fid"}


def trial_steps(cfg: Config) -> int:
    return cfg.tune.train_steps or cfg.train.steps


def grace_steps(cfg: Config) -> int:
    """ASHA's grace period in training steps (``tune.grace_period``; 0 = one report's worth)."""
    return cfg.tune.grace_period or max(1, round(trial_steps(cfg) / cfg.tune.reports))


def trial_space(cfg: Config) -> TrialSpace:
    """``tune.space`` checked before any work: every key must exist and every candidate value be valid."""
    tc = cfg.tune
    if tc.objective in RETIRED:
        raise ConfigError(f"tune.objective={tc.objective}: {RETIRED[tc.objective]}")
    if tc.objective not in OBJECTIVE_MODE:
        raise ConfigError(f"tune.objective={tc.objective!r}: choose from {list(OBJECTIVE_MODE)}")
    if tc.grace_period > trial_steps(cfg):
        raise ConfigError(f"tune.grace_period={tc.grace_period} steps is more than a trial trains "
                          f"({trial_steps(cfg)} steps: tune.train_steps, else train.steps)")
    if tc.reports > trial_steps(cfg):
        raise ConfigError(f"tune.reports={tc.reports} is more than the {trial_steps(cfg)} steps a trial trains")
    space = parse_space(cfg)
    require_optuna(tc.searcher)
    return TrialSpace(space, tc.search, tc.num_samples, tc.objective, OBJECTIVE_MODE[tc.objective], cfg.seed,
                      tc.searcher)


def few_classes(data) -> list[int]:
    return data.groups.get("few") or list(range(data.num_classes))


def check_validation(cfg: Config, data) -> None:
    """The objective needs validation images of every few class (at least 2 in all): one line otherwise."""
    few = few_classes(data)
    counts = data.validation.counts.counts
    missing = [c for c in few if not counts[c]]
    if missing or sum(counts[c] for c in few) < 2:
        raise ConfigError(f"tune.objective={cfg.tune.objective} needs validation images of the few classes, but "
                          f"class(es) {missing or few} have none (data.val_per_class={cfg.data.val_per_class}, "
                          f"data.val_max_holdout={cfg.data.val_max_holdout}); raise data.val_per_class")


def val_tail_fid(cfg: Config, ckpt_uri: str, data, device) -> float:
    """FID of the few group: ``tune.num_per_class`` generated images per few class vs the few classes'
    *validation* images (never the training images)."""
    from ..eval import fid
    from ..generate import GenerationPlan, ImageGenerator

    few = few_classes(data)
    budget = [cfg.tune.num_per_class if c in few else 0 for c in range(data.num_classes)]
    plan = GenerationPlan(tuple(budget), cfg.generate.seed, max(1, sum(budget)))
    gen = ImageGenerator(with_values(cfg, {"generate.minority_score": False}), ckpt_uri, device)
    rows = plan.rows(np.arange(plan.total))
    bs = cfg.generate.batch_size
    fake = np.concatenate([gen({k: v[a:a + bs] for k, v in rows.items()})["image"] for a in range(0, plan.total, bs)])
    val = data.validation
    real = val.images[np.isin(val.labels, few)]
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
    """One trial: ``tune.reports`` chunks of diffusion training, the objective after each (rank 0). A trial
    that finds checkpoints in its own directory (a restored sweep) resumes there and skips the chunks it had
    already reported (the chunk its checkpoint ends is reported again: its report may have been lost)."""
    from ..train import checkpoint as ckpt_io

    cfg = task.cfg
    quiet = QuietWorld(world)
    data = worker_data(task.data_uri)
    total, R = trial_steps(cfg), cfg.tune.reports
    chunks = [max(1, round(total * r / R)) for r in range(1, R + 1)]
    done = max([step for step, _ in ckpt_io.list_checkpoints(task.ckpt_dir)], default=0)
    resumed_from = None
    for steps in chunks:
        if steps < done:
            continue
        c = with_values(cfg, {"train.steps": steps, "train.ckpt_every": 0, "train.sample_every": 0})
        res = fit_diffusion(c, data, quiet, task.ckpt_dir, progress=False)
        resumed_from = res.resumed_from if resumed_from is None else resumed_from
        metrics: dict[str, float] = {"step": float(res.step), "resumed_from": float(resumed_from),
                                     **{k: float(v) for k, v in quiet.last.items()}}
        if world.is_main:
            metrics[cfg.tune.objective] = val_tail_fid(cfg, res.checkpoint, data, world.device)
        report(metrics)


def tune(cfg: Config, run: Run, launcher: Launcher) -> dict[str, Any]:
    """summary: best_overrides, best_metric, metric, mode, preset (YAML URI), trials (trial_id, overrides, the
    objective, step, resumed_from, iterations, error), num_trials, errors, restored (an interrupted sweep of this
    run dir was resumed)."""
    space = trial_space(cfg)
    data, data_uri = stage_data(cfg)
    check_validation(cfg, data)
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
           "restored": any(t.restored for t in trials),
           "trials": [{"trial_id": t.trial_id, "overrides": t.overrides, metric: t.metrics.get(metric),
                       "step": t.metrics.get("step"), "resumed_from": t.metrics.get("resumed_from"),
                       "iterations": t.reports, "error": t.error} for t in trials], "dataset": data_uri}
    run.tracker.log_metrics({f"best_{metric}": out["best_metric"], "trials": len(trials)})
    run.tracker.set_tags({"ltaug.best_overrides": str(best.overrides)})
    return out


__all__ = ["tune", "tune_trial", "trial_space", "val_tail_fid", "check_validation", "trial_steps", "grace_steps",
           "QuietWorld", "OBJECTIVE_MODE"]
