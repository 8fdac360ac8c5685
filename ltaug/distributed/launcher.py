"""``RayLauncher``: the stages' launcher on Ray (chosen when ``resources.num_workers >= 1``).

- ``train``: a ``TorchTrainer`` with ``resources.num_workers`` workers (DDP: gloo on CPU, NCCL with
  ``use_gpu``), ``FailureConfig(max_failures)``; every rank runs the stage's worker function with a
  ``RayWorld``; rank 0 reports metrics to Ray Train and writes the result JSON; a controller-side callback
  logs them (workers never write to the tracking store, see ``train.py``).
- ``preflight``: before any work, ``resources.use_gpu`` needs cluster GPUs and, on more than one alive node,
  storage and tracking must be reachable from every node (``cluster.py``).
- ``map_shards``: Ray Data, ``from_items(#pending) -> map_batches(actor pool of producers that publish)``,
  streamed, one shard per Ray Data task (the retry unit is the commit unit); ``map_verify``: the shard checks
  of ``--verify`` as Ray Data tasks.
- ``sweep``: Ray Tune (ASHA), one ``TorchTrainer`` per trial (Train V2 driver functions) reporting to Tune
  through ``TuneReportCallback``; each trial logs into a child run of the job's tracker.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..stages.launcher import Task, TrialFn, TrialResult, TrialSpace, WorkerFn
from ..track import Tracker
from .cluster import preflight
from .shards import ShardActor, map_shards, map_verify
from .sweep import run_sweep
from .train import run_training


class RayLauncher:
    name = "ray"

    def __init__(self, cfg: Any, *, fail_at_step: int | None = None, fail_mode: str = "raise") -> None:
        self.cfg = cfg
        self.resources = cfg.resources
        self.fail_at_step = fail_at_step   # tests: the last rank fails once (raise | exit) at this step
        self.fail_mode = fail_mode

    def preflight(self, cfg: Any) -> None:
        """Connect to Ray; refuse ``resources.use_gpu`` without cluster GPUs and, on more than one alive node,
        node-local storage / tracking (``cluster.preflight``)."""
        preflight(cfg)

    def train(self, fn: WorkerFn, task: Task, tracker: Tracker) -> dict:
        return run_training(self.cfg, fn, task, tracker, self.fail_at_step, self.fail_mode)

    def map_shards(self, make_producer, pending: Sequence[int], publish, on_done, retries: int = 0) -> None:
        map_shards(self.cfg, make_producer, pending, publish, on_done, retries)

    def map_verify(self, check, items):
        return map_verify(self.cfg, check, items)

    def sweep(self, fn: TrialFn, task: Task, trials: TrialSpace, tracker: Tracker) -> list[TrialResult]:
        return run_sweep(self.cfg, fn, task, trials, tracker)


__all__ = ["RayLauncher", "ShardActor"]
