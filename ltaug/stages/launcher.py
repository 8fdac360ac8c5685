"""Launchers: where a stage's heavy work runs. Chosen once, from ``resources.num_workers``.

A stage hands its work to the launcher it was given and never asks which one it got:

- ``train(fn, task, tracker)``: run ``fn(task, world, tracker)`` on every training worker and return rank
  0's dict (plus ``world_size``). ``LocalLauncher``: one in-process ``LocalWorld``. The Ray launcher
  (``ltaug.distributed.RayLauncher``): a ``TorchTrainer`` with ``resources.num_workers`` workers.
- ``map_shards(make_producer, pending, publish, on_done)``: turn each pending shard id into tar bytes
  with a producer built once per worker, publish it, call ``on_done(stats)`` on the driver.
- ``sweep(fn, task, trials, tracker)``: run ``fn(task, world, report)`` once per trial (overrides),
  ``report(metrics)`` after every chunk; returns one :class:`TrialResult` per trial.

A :class:`Task` carries what a worker needs and nothing from the driver's memory: the config, the URI of
the cached dataset artifact (``ltaug.data.artifact``), the checkpoint and run directories and a small
payload. Workers log through the tracker they are handed (``Tracker`` objects are picklable).
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from ..config import Config, with_values
from ..track import Tracker
from ..train import LocalWorld, World, resolve_device


@dataclass(frozen=True)
class Task:
    kind: str                 # diffusion | classifier | tune | any custom name
    cfg: Config
    data_uri: str             # the dataset artifact the workers read
    ckpt_dir: str             # where rank 0 writes ckpt-<step>.pt (shared storage on a cluster)
    run_dir: str              # the stage's run directory (local or s3://)
    payload: Any = None       # stage-specific extras (e.g. the selected synthetic set)


WorkerFn = Callable[[Task, World, Tracker], dict]
TrialFn = Callable[[Task, World, Callable[[dict[str, float]], None]], None]


@dataclass
class TrialResult:
    overrides: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)   # the last report
    reports: int = 0
    error: str | None = None


class Launcher(Protocol):
    name: str

    def train(self, fn: WorkerFn, task: Task, tracker: Tracker) -> dict: ...

    def map_shards(self, make_producer: Callable[[], Any], pending: Sequence[int],
                   publish: Callable[[bytes, Any], None], on_done: Callable[[Any], None]) -> None: ...

    def sweep(self, fn: TrialFn, task: Task, trials: "TrialSpace", tracker: Tracker) -> list[TrialResult]: ...


@dataclass(frozen=True)
class TrialSpace:
    """``tune.space`` as data: dotted key -> candidate values, ``grid`` (every combination x num_samples)
    or ``choice`` (num_samples random picks); the objective and its mode."""

    space: dict[str, tuple[Any, ...]]
    search: str
    num_samples: int
    metric: str
    mode: str                 # min | max
    seed: int = 0

    def overrides(self) -> list[dict[str, Any]]:
        """The trials a sequential launcher runs (the Ray launcher hands the same space to Ray Tune)."""
        keys = list(self.space)
        if self.search == "grid":
            combos = [dict(zip(keys, vals)) for vals in itertools.product(*(self.space[k] for k in keys))]
            return combos * self.num_samples
        rng = random.Random(self.seed)
        return [{k: rng.choice(list(self.space[k])) for k in keys} for _ in range(self.num_samples)]


class LocalLauncher:
    """Everything in this process: a for-loop over shards, one ``LocalWorld``, trials one after another."""

    name = "local"

    def __init__(self, resources: Any) -> None:
        self.resources = resources
        self.device = resolve_device(resources)

    def train(self, fn: WorkerFn, task: Task, tracker: Tracker) -> dict:
        world = LocalWorld(self.device, on_report=lambda m, step, _ck: tracker.log_metrics(m, step))
        return {**fn(task, world, tracker), "world_size": 1}

    def map_shards(self, make_producer, pending, publish, on_done) -> None:
        if not pending:
            return
        producer = make_producer()
        for s in pending:
            data, stats = producer(int(s))
            publish(data, stats)
            on_done(stats)

    def sweep(self, fn: TrialFn, task: Task, trials: TrialSpace, tracker: Tracker) -> list[TrialResult]:
        out = []
        for k, ov in enumerate(trials.overrides()):
            res = TrialResult(dict(ov))
            child = tracker.child(f"trial-{k:04d}")
            child.log_params({f"trial.{key}": v for key, v in ov.items()})
            t = Task(task.kind, with_values(task.cfg, ov), task.data_uri, f"{task.ckpt_dir}/trial-{k:04d}",
                     task.run_dir, task.payload)

            def report(metrics: dict[str, float], _res=res, _child=child) -> None:
                _res.reports += 1
                _res.metrics = dict(metrics)
                _child.log_metrics(metrics, _res.reports)

            status = "FAILED"
            try:
                fn(t, LocalWorld(self.device), report)
                status = "FINISHED"
            except (ValueError, RuntimeError) as e:   # a failed trial is recorded, the sweep goes on
                res.error = f"{type(e).__name__}: {e}"
            finally:
                child.close(status)
            out.append(res)
        return out


__all__ = ["Task", "WorkerFn", "TrialFn", "TrialResult", "TrialSpace", "Launcher", "LocalLauncher"]
