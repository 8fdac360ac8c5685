"""Ray Tune for ``RayLauncher.sweep``: ASHA over the trial space, one ``TorchTrainer`` per trial (Train V2
driver functions) reporting to Tune through ``TuneReportCallback``; each trial logs into a child run of the job's
tracker."""
from __future__ import annotations

import os
from typing import Any

from .. import storage
from ..config import with_values
from ..stages.launcher import Task, TrialFn, TrialResult, TrialSpace
from ..track import Tracker
from .runtime import ensure_ray
from .world import RayWorld


def _trial_worker(config: dict) -> None:
    import ray.train

    tracker: Tracker = config["tracker"]
    world = RayWorld()
    k = [0]

    def report(metrics: dict[str, float]) -> None:
        k[0] += 1
        if world.is_main:
            tracker.log_metrics(metrics, k[0])
        ray.train.report(metrics)

    config["fn"](config["task"], world, report)


def _trial(config: dict, fn: TrialFn, task: Task, tracker: Tracker, resources: Any, trial_cpus: float) -> None:
    """Tune driver function: one TorchTrainer per trial, metrics forwarded by TuneReportCallback."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    overrides = dict(config["overrides"])
    trial_id = tune.get_context().get_trial_id()
    child = tracker.child(f"trial-{trial_id}")
    child.log_params({f"trial.{k}": v for k, v in overrides.items()})
    t = Task(task.kind, with_values(task.cfg, overrides), task.data_uri, storage.join(task.ckpt_dir, f"trial-{trial_id}"),
             task.run_dir, task.payload)
    fs, path = storage.pyarrow_fs(storage.join(task.run_dir, "tune", "train"))
    trainer = TorchTrainer(
        _trial_worker, train_loop_config={"fn": fn, "task": t, "tracker": child},
        scaling_config=ray.train.ScalingConfig(num_workers=max(1, resources.num_workers), use_gpu=resources.use_gpu,
                                               resources_per_worker={"CPU": trial_cpus}),
        run_config=ray.train.RunConfig(name=f"train-{trial_id}", storage_path=path, storage_filesystem=fs,
                                       failure_config=ray.train.FailureConfig(max_failures=resources.max_failures),
                                       callbacks=[TuneReportCallback()]))
    status = "FAILED"
    try:
        trainer.fit()
        status = "FINISHED"
    finally:
        child.close(status)


def run_sweep(cfg: Any, fn: TrialFn, task: Task, trials: TrialSpace, tracker: Tracker) -> list[TrialResult]:
    """``RayLauncher.sweep``: Ray Tune (ASHA), one TorchTrainer per trial."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    tc = cfg.tune
    ensure_ray(cfg.resources, dashboard=True)  # Train-in-Tune with ASHA needs the dashboard (placement groups)
    pick = tune.grid_search if trials.search == "grid" else tune.choice
    space = {"overrides": {k: pick(list(v)) for k, v in trials.space.items()}}
    fs, path = storage.pyarrow_fs(storage.join(task.run_dir, "tune", "tuner"))
    trainable = tune.with_parameters(_trial, fn=fn, task=task, tracker=tracker, resources=cfg.resources,
                                     trial_cpus=tc.trial_cpus)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"CPU": 0.25}), param_space=space,
        tune_config=tune.TuneConfig(metric=trials.metric, mode=trials.mode, num_samples=trials.num_samples,
                                    max_concurrent_trials=tc.max_concurrent,
                                    scheduler=ASHAScheduler(max_t=tc.reports + 1, grace_period=tc.grace_period),
                                    time_budget_s=tc.time_budget_s or None),
        run_config=tune.RunConfig(name=os.path.basename(task.run_dir.rstrip("/")) + "-tune", storage_path=path,
                                  storage_filesystem=fs))
    grid = tuner.fit()
    out = []
    for r in grid:
        m = {k: float(v) for k, v in (r.metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        out.append(TrialResult(dict(r.config.get("overrides", {})), m, int(m.get("training_iteration", 0)),
                               None if r.error is None else f"{type(r.error).__name__}: {str(r.error)[:300]}"))
    return out


__all__ = ["run_sweep"]
