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

from typing import Any, Sequence

from ..stages.launcher import Task, TrialFn, TrialResult, TrialSpace, WorkerFn
from ..track import Tracker
from .shards import ShardActor, map_shards
from .sweep import run_sweep
from .train import run_training


class RayLauncher:
    name = "ray"

    def __init__(self, cfg: Any, *, fail_at_step: int | None = None) -> None:
        self.cfg = cfg
        self.resources = cfg.resources
        self.fail_at_step = fail_at_step

    def train(self, fn: WorkerFn, task: Task, tracker: Tracker) -> dict:
        return run_training(self.cfg, fn, task, tracker, self.fail_at_step)

    def map_shards(self, make_producer, pending: Sequence[int], publish, on_done) -> None:
        map_shards(self.cfg, make_producer, pending, publish, on_done)

    def sweep(self, fn: TrialFn, task: Task, trials: TrialSpace, tracker: Tracker) -> list[TrialResult]:
        return run_sweep(self.cfg, fn, task, trials, tracker)


__all__ = ["RayLauncher", "ShardActor"]
