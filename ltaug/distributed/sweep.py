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
from .train import tracker_callback
from .world import RayWorld


def _trial_worker(config: dict) -> None:
    """A trial's Train worker: reports only (rank 0's reports reach MLflow through the trial's controller-side
    ``tracker_callback``, never from a worker)."""
    import ray.train

    world = RayWorld()
    config["fn"](config["task"], world, lambda metrics: ray.train.report(metrics))


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
        _trial_worker, train_loop_config={"fn": fn, "task": t},
        scaling_config=ray.train.ScalingConfig(num_workers=max(1, resources.num_workers), use_gpu=resources.use_gpu,
                                               resources_per_worker={"CPU": trial_cpus},
                                               placement_strategy=resources.placement.upper()),
        run_config=ray.train.RunConfig(name=f"train-{trial_id}", storage_path=path, storage_filesystem=fs,
                                       failure_config=ray.train.FailureConfig(max_failures=resources.max_failures),
                                       callbacks=[TuneReportCallback(), tracker_callback(child)]))
    status = "FAILED"
    try:
        trainer.fit()
        status = "FINISHED"
    finally:
        child.close(status)


def param_space(trials: TrialSpace) -> dict[str, Any]:
    """The trial space as Ray Tune's: lists -> ``grid_search`` (``tune.search=grid``) or ``choice``;
    ``{choice}`` / ``{uniform}`` / ``{loguniform}`` / ``{randint}`` (ends included) -> the same in ``ray.tune``."""
    from ray import tune

    def one(d: Any) -> Any:
        if d.kind == "list" and trials.search == "grid":
            return tune.grid_search(list(d.values))
        if d.categorical:
            return tune.choice(list(d.values))
        if d.kind == "uniform":
            return tune.uniform(d.lo, d.hi)
        if d.kind == "loguniform":
            return tune.loguniform(d.lo, d.hi)
        return tune.randint(int(d.lo), int(d.hi) + 1)   # Ray's upper bound is exclusive

    return {"overrides": {k: one(d) for k, d in trials.dists().items()}}


def run_sweep(cfg: Any, fn: TrialFn, task: Task, trials: TrialSpace, tracker: Tracker) -> list[TrialResult]:
    """``RayLauncher.sweep``: Ray Tune, ASHA on the diffusion training step, one TorchTrainer per trial; the
    optional Optuna searcher behind a ConcurrencyLimiter. The experiment lives at ``<run dir>/tune/tuner/
    <run name>-tune``: when it is there already (an interrupted run of this run dir), ``Tuner.restore`` resumes
    it (unfinished and errored trials resume; each trial's Train run and checkpoints are named by its id)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from ..stages.tune import grace_steps, trial_steps

    tc = cfg.tune
    ensure_ray(cfg.resources, dashboard=True)  # Train-in-Tune with ASHA needs the dashboard (placement groups)
    fs, path = storage.pyarrow_fs(storage.join(task.run_dir, "tune", "tuner"))
    name = os.path.basename(task.run_dir.rstrip("/")) + "-tune"
    exp_path = f"{path.rstrip('/')}/{name}"
    trainable = tune.with_resources(tune.with_parameters(_trial, fn=fn, task=task, tracker=tracker,
                                                         resources=cfg.resources, trial_cpus=tc.trial_cpus),
                                    {"CPU": 0.25})
    restored = tune.Tuner.can_restore(exp_path, storage_filesystem=fs)
    if restored:
        tuner = tune.Tuner.restore(exp_path, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=fs)
    else:
        search_alg = None
        if trials.searcher == "optuna":
            from ray.tune.search import ConcurrencyLimiter
            from ray.tune.search.optuna import OptunaSearch

            search_alg = ConcurrencyLimiter(OptunaSearch(seed=trials.seed), max_concurrent=tc.max_concurrent)
        # max_t one past the trial's steps: the last report (step = the trial's steps) is not a STOP, so every
        # trial ends by itself and closes its MLflow run; ASHA's rungs are grace, grace * 4, ... steps
        asha = ASHAScheduler(time_attr="step", max_t=trial_steps(cfg) + 1, grace_period=grace_steps(cfg))
        tuner = tune.Tuner(
            trainable, param_space=param_space(trials),
            tune_config=tune.TuneConfig(metric=trials.metric, mode=trials.mode, num_samples=trials.num_samples,
                                        search_alg=search_alg, max_concurrent_trials=tc.max_concurrent,
                                        scheduler=asha, time_budget_s=tc.time_budget_s or None,
                                        trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(name=name, storage_path=path, storage_filesystem=fs))
    grid = tuner.fit()
    out = []
    for r in grid:
        m = {k: float(v) for k, v in (r.metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        tid = (r.metrics or {}).get("trial_id") or os.path.basename(str(r.path)).removeprefix("trial-")
        out.append(TrialResult(dict(r.config.get("overrides", {})), m, int(m.get("training_iteration", 0)),
                               None if r.error is None else f"{type(r.error).__name__}: {str(r.error)[:300]}",
                               str(tid), restored))
    return out


def _trial_dirname(trial: Any) -> str:
    return f"trial-{trial.trial_id}"


__all__ = ["run_sweep", "param_space"]
