"""Ray Train for ``RayLauncher.train``: a ``TorchTrainer`` with ``resources.num_workers`` workers (DDP: gloo on
CPU, NCCL with ``use_gpu``), ``FailureConfig(max_failures)``; every rank runs the stage's worker function with a
``RayWorld``; rank 0 writes the result JSON.

Workers never write to the tracking store. Rank 0's metrics travel with ``ray.train.report`` and are logged by
``TrackerCallback``, a Ray Train ``UserCallback`` that runs in the Train *controller* actor, which Ray pins to
the driver's node (``TorchTrainer.fit`` schedules it with the driver's node id). The callback holds a pickled
copy of the job's tracker: on one machine it may be the embedded SQLite store; on a multi-node cluster
``cluster.preflight`` has already refused a node-local store, so it is an ``http(s)://`` tracking server (or a
store on a declared shared mount). Workers are handed a :class:`WorkerTracker` that refuses to log; files they
produce go under the run directory and the stage logs them from the driver (``Run.log_uri``). Metrics a worker
failure kept from the controller are replayed from rank 0's journal after the restart (``world.REPLAY``).
"""
from __future__ import annotations

import json
import os
import uuid
from typing import Any

from .. import storage
from ..stages.launcher import Task, WorkerFn
from ..track import Tracker
from .runtime import ensure_ray
from .world import REPLAY, RayWorld


class WorkerTracker:
    """The tracker a Ray Train worker is handed: it refuses to write (workers never touch the tracking store)."""

    def __init__(self, run_id: str | None) -> None:
        self.run_id = run_id

    def _refuse(self, what: str) -> None:
        raise RuntimeError(f"tracker.{what} called on a Ray Train worker: workers never write to the tracking "
                           f"store; report metrics through world.report and write files under task.run_dir "
                           f"(the stage logs them from the driver)")

    def log_params(self, params: dict[str, Any]) -> None:
        self._refuse("log_params")

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._refuse("log_metrics")

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self._refuse("log_artifact")

    def log_image(self, image: Any, name: str) -> None:
        self._refuse("log_image")

    def set_tags(self, tags: dict[str, str]) -> None:
        self._refuse("set_tags")

    def child(self, name: str) -> "WorkerTracker":
        self._refuse("child")
        return self

    def close(self, status: str = "FINISHED") -> None:
        pass


def log_report(tracker: Tracker, metrics: dict[str, Any]) -> int:
    """Log rank 0's report (and the reports it replays) at their steps; the last step logged."""
    m = dict(metrics)
    step = 0
    for r in m.pop(REPLAY, None) or []:
        step = int(r["step"])
        tracker.log_metrics(r, step)
    if "step" in m:
        step = int(m["step"])
        tracker.log_metrics(m, step)
    return step


def tracker_callback(tracker: Tracker):
    """A Ray Train ``UserCallback`` logging rank 0's reports into ``tracker`` from the Train controller."""
    from ray.train import UserCallback

    class TrackerCallback(UserCallback):
        def __init__(self, tracker: Tracker) -> None:
            self.tracker = tracker

        def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
            if metrics:
                log_report(self.tracker, metrics[0])

    return TrackerCallback(tracker)


def _worker_loop(config: dict) -> None:
    """``train_loop_per_worker``: the stage's worker function on a RayWorld; rank 0 writes the result."""
    import torch

    world = RayWorld(fail=config.get("fail"), journal=config["journal"])
    torch.manual_seed(config["task"].cfg.seed + world.rank)
    out = config["fn"](config["task"], world, WorkerTracker(config["run_id"]))
    if world.is_main:
        storage.write_bytes(config["result_uri"], json.dumps({**out, "world_size": world.world_size},
                                                             default=str).encode())


def run_training(cfg: Any, fn: WorkerFn, task: Task, tracker: Tracker, fail_at_step: int | None = None,
                 fail_mode: str = "raise") -> dict:
    """``RayLauncher.train``: a TorchTrainer over ``resources.num_workers`` workers; rank 0's result dict.
    ``fail_at_step`` (tests): the last rank fails once there (``fail_mode``: ``raise`` | ``exit``)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    res = cfg.resources
    ensure_ray(res)
    name = f"{os.path.basename(task.run_dir.rstrip('/'))}-{task.kind}"   # stable: re-submission resumes
    fs, path = storage.pyarrow_fs(storage.join(task.run_dir, "ray"))
    if not storage.is_remote(task.run_dir):
        os.makedirs(path, exist_ok=True)
    result_uri = storage.join(task.run_dir, f"{task.kind}_result.json")
    # one journal per fit: a re-submitted job never replays an earlier job's reports into its own MLflow run
    journal = storage.join(task.run_dir, "ray", f"{name}-metrics", uuid.uuid4().hex[:12])
    config: dict[str, Any] = {"task": task, "fn": fn, "result_uri": result_uri, "journal": journal,
                              "run_id": tracker.run_id}
    if fail_at_step is not None:
        config["fail"] = {"at_step": fail_at_step, "mode": fail_mode,
                          "marker": storage.join(task.run_dir, f"_injected_failure_{task.kind}")}
    trainer = TorchTrainer(
        _worker_loop, train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                               resources_per_worker={"CPU": res.cpus_per_worker},
                                               placement_strategy=res.placement.upper()),
        run_config=ray.train.RunConfig(name=name, storage_path=path, storage_filesystem=fs,
                                       failure_config=ray.train.FailureConfig(max_failures=res.max_failures),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                                       callbacks=[tracker_callback(tracker)]))
    result = trainer.fit()
    last = (result.metrics or {}).get("step")
    if isinstance(last, (int, float)) and hasattr(tracker, "last_step"):   # metrics logged after fit: at its end
        tracker.last_step = max(int(tracker.last_step), int(last))
    return json.loads(storage.read_bytes(result_uri))


__all__ = ["run_training", "tracker_callback", "log_report", "WorkerTracker"]
