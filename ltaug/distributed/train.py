"""Ray Train for ``RayLauncher.train``: a ``TorchTrainer`` with ``resources.num_workers`` workers (DDP: gloo on
CPU, NCCL with ``use_gpu``), ``FailureConfig(max_failures)``; every rank runs the stage's worker function with a
``RayWorld``; rank 0 logs metrics through the tracker it is handed and writes the result JSON."""
from __future__ import annotations

import json
import os
from typing import Any

from .. import storage
from ..stages.launcher import Task, WorkerFn
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


def run_training(cfg: Any, fn: WorkerFn, task: Task, tracker: Tracker, fail_at_step: int | None = None) -> dict:
    """``RayLauncher.train``: a TorchTrainer over ``resources.num_workers`` workers; rank 0's result dict."""
    import ray.train
    from ray.train.torch import TorchTrainer

    res = cfg.resources
    ensure_ray(res)
    name = f"{os.path.basename(task.run_dir.rstrip('/'))}-{task.kind}"   # stable: re-submission resumes
    fs, path = storage.pyarrow_fs(storage.join(task.run_dir, "ray"))
    if not storage.is_remote(task.run_dir):
        os.makedirs(path, exist_ok=True)
    result_uri = storage.join(task.run_dir, f"{task.kind}_result.json")
    config: dict[str, Any] = {"task": task, "fn": fn, "tracker": tracker, "result_uri": result_uri}
    if fail_at_step is not None:
        config["fail"] = {"at_step": fail_at_step,
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


__all__ = ["run_training"]
