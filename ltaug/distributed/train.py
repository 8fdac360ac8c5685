"""Ray Train adapter: a ``RayWorld`` for the one training loop, and ``run_training`` for the jobs.

``run_training(cfg, run, kind)`` runs the *same* pure training function the local jobs call
(``train_diffusion`` / ``train_classifier``, or any ``fn(cfg, world, ckpt_dir) -> dict``):

- ``resources.num_workers == 0``: in-process with ``LocalWorld`` (no Ray).
- ``>= 1``: a ``TorchTrainer`` with that many workers (DDP: gloo on CPU, NCCL with ``use_gpu``),
  ``resources_per_worker`` from ``resources.cpus_per_worker``, ``FailureConfig(max_failures)``.
  Each rank trains on its disjoint slice of every global batch (``StepBatches``). Rank 0 writes
  ``ckpt-<step>.pt`` into ``ckpt_dir`` (the run's storage: local or s3://; shared storage on multi-node
  clusters) and reports each one to Ray Train as a small pointer checkpoint under the run's storage path.
  After a worker failure Ray restarts the group and the loop resumes from the newest *valid* checkpoint
  in ``ckpt_dir``; re-submitting the same job (same run name) resumes the same way. Checkpoints hold the
  unwrapped model and the global step only, so a checkpoint written by N workers resumes on M workers.
  Metrics go to the job's MLflow run from rank 0 only.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .. import storage

POINTER = "ltaug_checkpoint.json"   # the Ray checkpoint: a pointer to the ltaug checkpoint file

TrainFn = Callable[[Any, Any, str], dict]


class InjectedFailure(RuntimeError):
    """Raised by a worker on purpose (tests of failure recovery)."""


class RayWorld:
    """The World protocol inside a Ray Train worker."""

    def __init__(self, on_report: Callable[[dict[str, float], int, str | None], Any] | None = None,
                 fail: dict[str, Any] | None = None) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self._on_report = on_report
        self._fail = fail or {}

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        if self.world_size == 1:
            return model.to(self.device)
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": False})

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1 and torch.distributed.is_initialized():
            value = value.detach().clone()
            torch.distributed.all_reduce(value)
            value /= self.world_size
        return value

    def report(self, metrics: dict[str, float], step: int, checkpoint_dir: str | None = None) -> None:
        import ray.train

        self._maybe_fail(step)
        metrics = {**{k: float(v) for k, v in metrics.items()}, "step": step}
        if self.is_main and self._on_report is not None:
            self._on_report(metrics, step, checkpoint_dir)
        if checkpoint_dir and self.is_main:
            from ..train import checkpoint as ckpt_io

            with tempfile.TemporaryDirectory() as d:
                with open(os.path.join(d, POINTER), "w") as fh:
                    json.dump({"checkpoint": ckpt_io.path_for(checkpoint_dir, step), "step": step}, fh)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                                 checkpoint_dir_name=f"checkpoint_{step:09d}")
        else:
            ray.train.report(metrics)   # a barrier: every rank reports the same number of times

    def _maybe_fail(self, step: int) -> None:
        f = self._fail
        if not f or step < f["at_step"] or self.rank != f.get("rank", self.world_size - 1):
            return
        if storage.exists(f["marker"]):
            return
        storage.write_bytes(f["marker"], str(step).encode())
        raise InjectedFailure(f"injected failure on rank {self.rank} at step {step}")


# ------------------------------------------------------------------------------------------ train fns


def diffusion_train_fn(cfg, world, ckpt_dir: str) -> dict:
    """``train_diffusion`` on the configured dataset (what jobs/train_diffusion.py runs locally)."""
    from ..data import load_dataset
    from ..diffusion import train_diffusion

    feature_space = None
    if cfg.loss.aid > 0:
        from ..classify import load_classifier
        from ..diffusion import SimpleFeatureSpace

        clf, bank = load_classifier(cfg.classifier.checkpoint, world.device)
        feature_space = SimpleFeatureSpace(clf.features, bank.centers, bank.radii)
    res = train_diffusion(cfg, load_dataset(cfg.data), world, ckpt_dir, feature_space=feature_space,
                          progress=world.is_main)
    return {"checkpoint": res.checkpoint, "step": res.step, "resumed_from": res.resumed_from,
            "history": res.history[-20:]}


def classifier_train_fn(cfg, world, ckpt_dir: str, synthetic: Any = None) -> dict:
    """``train_classifier`` on the configured dataset (+ an optional synthetic ImageSet)."""
    from ..classify import train_classifier
    from ..data import load_dataset

    res = train_classifier(cfg, load_dataset(cfg.data), world, ckpt_dir, synthetic=synthetic, progress=world.is_main)
    return {"checkpoint": res.checkpoint, "step": res.steps, "num_real": res.num_real,
            "num_synthetic": res.num_synthetic, "history": res.history[-20:]}


TRAIN_FNS: dict[str, TrainFn] = {"diffusion": diffusion_train_fn, "classifier": classifier_train_fn}


# ------------------------------------------------------------------------------------------ runner


@dataclass(frozen=True)
class _Tracking:
    uri: str | None
    run_id: str | None


def _metric_logger(t: _Tracking):
    if not (t.uri and t.run_id):
        return None
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
    import math
    import time

    client = MlflowClient(tracking_uri=t.uri)

    def log(metrics: dict[str, float], step: int, _ckpt: str | None) -> None:
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if math.isfinite(float(v))]
        client.log_batch(t.run_id, metrics=items)
    return log


def _worker_loop(config: dict) -> None:
    """``train_loop_per_worker``: build the RayWorld, run the pure train fn, rank 0 writes the result."""
    fn: TrainFn = config["fn"]
    world = RayWorld(on_report=_metric_logger(config["tracking"]), fail=config.get("fail"))
    torch.manual_seed(config["cfg"].seed + world.rank)
    out = fn(config["cfg"], world, config["ckpt_dir"])
    if world.is_main:
        storage.write_bytes(config["result_uri"], json.dumps({**out, "world_size": world.world_size},
                                                             default=str).encode())


def run_training(cfg, run, kind: str, *, train_fn: TrainFn | None = None, ckpt_dir: str | None = None,
                 fail_at_step: int | None = None, local_on_report: Callable | None = None) -> dict:
    """Train ``kind`` (``diffusion`` / ``classifier`` or a custom ``train_fn``) locally or on Ray Train.

    Returns the train fn's dict (``checkpoint``, ``step``, ...) plus ``world_size`` and, under Ray,
    ``ray_checkpoint`` (the last reported pointer checkpoint's path).
    """
    fn = train_fn or TRAIN_FNS[kind]
    ckpt_dir = ckpt_dir or run.path("checkpoints")
    res = cfg.resources
    if res.num_workers == 0:
        from ..train import LocalWorld

        device = "cuda" if (res.use_gpu and torch.cuda.is_available()) else "cpu"
        on_report = local_on_report or (lambda m, step, ck: run.tracker.log_metrics(m, step))
        return {**fn(cfg, LocalWorld(device, on_report=on_report), ckpt_dir), "world_size": 1}
    return _run_ray_train(cfg, run, kind, fn, ckpt_dir, fail_at_step)


def _run_ray_train(cfg, run, kind: str, fn: TrainFn, ckpt_dir: str, fail_at_step: int | None) -> dict:
    import ray.train
    from ray.train.torch import TorchTrainer

    from .runtime import ensure_ray

    res = cfg.resources
    ensure_ray(res)
    name = f"{os.path.basename(run.dir.rstrip('/'))}-{kind}"          # stable: re-submission resumes
    ray_storage = storage.join(run.dir, "ray")
    fs, path = storage.pyarrow_fs(ray_storage)
    if not storage.is_remote(ray_storage):
        os.makedirs(path, exist_ok=True)
    result_uri = storage.join(run.dir, f"{kind}_result.json")
    tracker = run.tracker
    config = {"cfg": cfg, "fn": fn, "ckpt_dir": ckpt_dir, "result_uri": result_uri,
              "tracking": _Tracking(getattr(tracker, "uri", None), tracker.run_id)}
    if fail_at_step is not None:
        config["fail"] = {"at_step": fail_at_step, "marker": storage.join(run.dir, f"_injected_failure_{kind}")}
    resources = {"CPU": res.cpus_per_worker}
    trainer = TorchTrainer(
        _worker_loop, train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(name=name, storage_path=path, storage_filesystem=fs,
                                       failure_config=ray.train.FailureConfig(max_failures=res.max_failures),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)))
    result = trainer.fit()
    out = json.loads(storage.read_bytes(result_uri))
    if result.checkpoint is not None:
        out["ray_checkpoint"] = result.checkpoint.path
    return out


__all__ = ["RayWorld", "run_training", "TRAIN_FNS", "diffusion_train_fn", "classifier_train_fn", "InjectedFailure",
           "POINTER"]
