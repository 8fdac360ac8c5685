"""``RayLauncher``: the stages' launcher on Ray (chosen when ``resources.num_workers >= 1``).

- ``train``: a ``TorchTrainer`` with ``resources.num_workers`` workers (DDP: gloo on CPU, NCCL with
  ``use_gpu``), ``FailureConfig(max_failures)``; every rank runs the stage's worker function with a
  ``RayWorld``; rank 0 logs metrics through the tracker it is handed and writes the result JSON.
- ``map_shards``: Ray Data, ``range(#pending) -> map_batches(actor pool of producers) -> map_batches(publish)``,
  streamed; a shard is the unit of work, retry and commit.
- ``sweep``: Ray Tune (ASHA), one ``TorchTrainer`` per trial (Train V2 driver functions) reporting to Tune
  through ``TuneReportCallback``; each trial logs into a child run of the job's tracker.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

import numpy as np

from .. import storage
from ..config import with_values
from ..stages.launcher import Task, TrialFn, TrialResult, TrialSpace, WorkerFn
from ..track import Tracker
from .runtime import ensure_ray
from .world import RayWorld


def _worker_loop(config: dict) -> None:
    """``train_loop_per_worker``: the stage's worker function on a RayWorld; rank 0 writes the result."""
    import torch

    tracker: Tracker = config["tracker"]
    world = RayWorld(on_report=lambda m, step, _ck: tracker.log_metrics(m, step), fail=config.get("fail"))
    torch.manual_seed(config["task"].cfg.seed + world.rank)
    out = config["fn"](config["task"], world, tracker)
    if world.is_main:
        storage.write_bytes(config["result_uri"], json.dumps({**out, "world_size": world.world_size},
                                                             default=str).encode())


class ShardActor:
    """Ray Data actor: builds the producer once, then turns pending-shard positions into tar bytes."""

    def __init__(self, make_producer: Callable[[], Any], pending: np.ndarray) -> None:
        self.producer = make_producer()
        self.pending = np.asarray(pending, dtype=np.int64)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shards, tars, stats = [], [], []
        for pos in np.asarray(batch["id"], dtype=np.int64):
            s = int(self.pending[pos])
            data, st = self.producer(s)
            shards.append(s)
            tars.append(data)
            stats.append(json.dumps(st.to_dict()))
        return {"shard": np.asarray(shards, np.int64), "tar": np.asarray(tars, dtype=object),
                "stats": np.asarray(stats, dtype=object)}


def _publish_batch(batch: dict[str, np.ndarray], publish: Callable[[bytes, Any], None]) -> dict[str, np.ndarray]:
    """Ray Data writer task: publish each shard atomically; pass only the small stats on."""
    from ..generate import ShardStats

    for data, st in zip(batch["tar"], batch["stats"]):
        publish(bytes(data), ShardStats.from_dict(json.loads(st)))
    return {"shard": np.asarray(batch["shard"]), "stats": np.asarray(batch["stats"], dtype=object)}


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


class RayLauncher:
    name = "ray"

    def __init__(self, cfg: Any, *, fail_at_step: int | None = None) -> None:
        self.cfg = cfg
        self.resources = cfg.resources
        self.fail_at_step = fail_at_step

    # ------------------------------------------------------------------------------------ train
    def train(self, fn: WorkerFn, task: Task, tracker: Tracker) -> dict:
        import ray.train
        from ray.train.torch import TorchTrainer

        res = self.resources
        ensure_ray(res)
        name = f"{os.path.basename(task.run_dir.rstrip('/'))}-{task.kind}"   # stable: re-submission resumes
        fs, path = storage.pyarrow_fs(storage.join(task.run_dir, "ray"))
        if not storage.is_remote(task.run_dir):
            os.makedirs(path, exist_ok=True)
        result_uri = storage.join(task.run_dir, f"{task.kind}_result.json")
        config: dict[str, Any] = {"task": task, "fn": fn, "tracker": tracker, "result_uri": result_uri}
        if self.fail_at_step is not None:
            config["fail"] = {"at_step": self.fail_at_step,
                              "marker": storage.join(task.run_dir, f"_injected_failure_{task.kind}")}
        trainer = TorchTrainer(
            _worker_loop, train_loop_config=config,
            scaling_config=ray.train.ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                                   resources_per_worker={"CPU": res.cpus_per_worker}),
            run_config=ray.train.RunConfig(name=name, storage_path=path, storage_filesystem=fs,
                                           failure_config=ray.train.FailureConfig(max_failures=res.max_failures),
                                           checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)))
        trainer.fit()
        return json.loads(storage.read_bytes(result_uri))

    # ------------------------------------------------------------------------------------ shards
    def map_shards(self, make_producer, pending: Sequence[int], publish, on_done) -> None:
        import ray

        if not pending:
            return
        res = self.resources
        ensure_ray(res)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = False
        ctx.max_errored_blocks = 0  # a failed shard fails the job (after retries): never silent data loss
        n = len(pending)
        pool: dict[str, Any] = {"size": max(1, int(res.num_workers))}
        if self.cfg.generate.max_in_flight:
            pool["max_tasks_in_flight_per_actor"] = self.cfg.generate.max_in_flight
        ds = ray.data.range(n, override_num_blocks=min(n, 1000))
        ds = ds.map_batches(ShardActor, fn_constructor_kwargs={"make_producer": make_producer,
                                                                "pending": np.asarray(pending, np.int64)},
                            batch_size=1, compute=ray.data.ActorPoolStrategy(**pool),
                            num_cpus=res.cpus_per_worker, num_gpus=1 if res.use_gpu else 0, zero_copy_batch=True)
        ds = ds.map_batches(_publish_batch, fn_kwargs={"publish": publish}, batch_size=1, num_cpus=0.1)
        from ..generate import ShardStats

        for row in ds.iter_rows():
            on_done(ShardStats.from_dict(json.loads(row["stats"])))

    # ------------------------------------------------------------------------------------ sweep
    def sweep(self, fn: TrialFn, task: Task, trials: TrialSpace, tracker: Tracker) -> list[TrialResult]:
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler

        tc = self.cfg.tune
        ensure_ray(self.resources, dashboard=True)  # Train-in-Tune with ASHA needs the dashboard (placement groups)
        pick = tune.grid_search if trials.search == "grid" else tune.choice
        space = {"overrides": {k: pick(list(v)) for k, v in trials.space.items()}}
        fs, path = storage.pyarrow_fs(storage.join(task.run_dir, "tune", "tuner"))
        trainable = tune.with_parameters(_trial, fn=fn, task=task, tracker=tracker, resources=self.resources,
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


__all__ = ["RayLauncher", "ShardActor"]
