"""Launchers: where a stage's heavy work runs. Chosen once, from ``resources.num_workers``.

A stage hands its work to the launcher it was given and never asks which one it got:

- ``train(fn, task, tracker)``: run ``fn(task, world, tracker)`` on every training worker and return rank
  0's dict (plus ``world_size``). ``LocalLauncher``: one in-process ``LocalWorld``. The Ray launcher
  (``ltaug.distributed.RayLauncher``): a ``TorchTrainer`` with ``resources.num_workers`` workers.
- ``map_shards(make_producer, pending, publish, on_done, retries=0)``: turn each pending shard id into tar
  bytes with a producer built once per worker (a producer that raises is tried ``retries`` more times, then
  the job fails naming the shard), publish it, call ``on_done(stats)`` on the driver.
- ``map_verify(check, items)``: ``check(item)`` for every item (a shard of a generation output), yielding
  the small results; serial here, Ray Data tasks over the cluster on Ray.
- ``sweep(fn, task, trials, tracker)``: run ``fn(task, world, report)`` once per trial (overrides),
  ``report(metrics)`` after every chunk; returns one :class:`TrialResult` per trial.

A :class:`Task` carries what a worker needs and nothing from the driver's memory: the config, the URI of
the cached dataset artifact (``ltaug.data.artifact``), the checkpoint and run directories and a small
payload. Workers report metrics through ``world.report`` and write files under ``task.run_dir``; the stage logs
those from the driver (on Ray, workers are handed a tracker that refuses to write: see ``ltaug.distributed.train``).
"""
from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, Sequence

from .. import storage
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
    trial_id: str = ""                                         # the launcher's id (kept when a sweep is restored)
    restored: bool = False                                     # the trial belongs to a restored sweep


class Launcher(Protocol):
    name: str

    def preflight(self, cfg: Config) -> None:
        """Checks of where the work will run, before any work (the Ray launcher: cluster GPUs, storage and
        tracking visible from every node)."""
        ...

    def train(self, fn: WorkerFn, task: Task, tracker: Tracker) -> dict: ...

    def map_shards(self, make_producer: Callable[[], Any], pending: Sequence[int],
                   publish: Callable[[bytes, Any], None], on_done: Callable[[Any], None],
                   retries: int = 0) -> None: ...

    def map_verify(self, check: Callable[[Any], dict], items: Sequence[Any]) -> Iterable[dict]: ...

    def sweep(self, fn: TrialFn, task: Task, trials: "TrialSpace", tracker: Tracker) -> list[TrialResult]: ...


@dataclass(frozen=True)
class TrialSpace:
    """``tune.space`` as data: dotted key -> :class:`~ltaug.stages.tune_space.Dist` (a plain tuple is a list
    axis); ``search``: ``grid`` (every combination of the list axes x num_samples, the other axes drawn per
    trial) or ``choice`` (num_samples draws); ``searcher``: random | optuna; the objective and its mode."""

    space: dict[str, Any]
    search: str
    num_samples: int
    metric: str
    mode: str                 # min | max
    seed: int = 0
    searcher: str = "random"

    def dists(self) -> dict[str, Any]:
        from .tune_space import as_dist

        return {k: as_dist(v) for k, v in self.space.items()}

    def overrides(self) -> list[dict[str, Any]]:
        """The trials a sequential launcher runs with the random searcher (seeded: the same list every time;
        the Ray launcher hands the same space to Ray Tune)."""
        from .tune_space import sample

        d = self.dists()
        rng = random.Random(self.seed)
        grid_keys = [k for k, v in d.items() if v.kind == "list"] if self.search == "grid" else []
        combos = [dict(zip(grid_keys, vals)) for vals in itertools.product(*(d[k].values for k in grid_keys))]
        out = []
        for _ in range(self.num_samples):
            for combo in combos:
                out.append({k: combo[k] if k in combo else sample(v, rng) for k, v in d.items()})
        return out


class LocalLauncher:
    """Everything in this process: a for-loop over shards, one ``LocalWorld``, trials one after another."""

    name = "local"

    def __init__(self, resources: Any) -> None:
        self.resources = resources
        self.device = resolve_device(resources)

    def preflight(self, cfg: Config) -> None:
        """Nothing to check: one process (the device was resolved in ``__init__``)."""

    def train(self, fn: WorkerFn, task: Task, tracker: Tracker) -> dict:
        world = LocalWorld(self.device, on_report=lambda m, step, _ck: tracker.log_metrics(m, step))
        return {**fn(task, world, tracker), "world_size": 1}

    def map_shards(self, make_producer, pending, publish, on_done, retries: int = 0) -> None:
        from ..generate import produce_with_retries

        if not pending:
            return
        producer = make_producer()
        for s in pending:
            data, stats = produce_with_retries(producer, int(s), retries)
            publish(data, stats)
            on_done(stats)

    def map_verify(self, check, items) -> Iterable[dict]:
        for it in items:
            yield check(it)

    def sweep(self, fn: TrialFn, task: Task, trials: TrialSpace, tracker: Tracker) -> list[TrialResult]:
        """Trials one after another. Each is recorded under ``<run dir>/tune/local/trial-<k>.json`` (its overrides
        when it starts, its last report when it ends): re-running the same run dir restores the sweep, keeping
        the finished trials and re-running the interrupted (or failed) ones with their recorded overrides, which
        resume from their own checkpoint directory. ``tune.searcher=optuna``: Optuna's ask/tell, seeded."""
        from .tune_space import optuna_distribution

        rec_dir = storage.join(task.run_dir, "tune", "local")
        records = _records(rec_dir, trials.num_samples if trials.searcher == "optuna" else len(trials.overrides()))
        restored = any(r is not None for r in records)
        study = dists = None
        if trials.searcher == "optuna":
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            dists = {k: optuna_distribution(d) for k, d in trials.dists().items()}
            study = optuna.create_study(direction="minimize" if trials.mode == "min" else "maximize",
                                        sampler=optuna.samplers.TPESampler(seed=trials.seed))
            planned: list[dict[str, Any] | None] = [None] * len(records)
        else:
            planned = list(trials.overrides())
        out = []
        for k, rec in enumerate(records):
            tid = f"{k:04d}"
            if rec is not None and rec.get("done") and rec.get("error") is None:
                res = TrialResult(dict(rec["overrides"]), dict(rec["metrics"]), int(rec["reports"]), None, tid, True)
                _tell(study, dists, res, trials.metric)
                out.append(res)
                continue
            ask = None
            if rec is not None:
                ov = dict(rec["overrides"])
            elif study is not None:
                ask = study.ask(fixed_distributions=dists)
                ov = dict(ask.params)
            else:
                ov = dict(planned[k])
            res = TrialResult(ov, {}, 0, None, tid, rec is not None)
            rec_uri = storage.join(rec_dir, f"trial-{tid}.json")
            storage.write_text(rec_uri, json.dumps({"overrides": ov, "done": False}, default=str))
            child = tracker.child(f"trial-{tid}")
            child.log_params({f"trial.{key}": v for key, v in ov.items()})

            def report(metrics: dict[str, float], _res=res, _child=child) -> None:
                _res.reports += 1
                _res.metrics = dict(metrics)
                _child.log_metrics(metrics, _res.reports)

            status = "FAILED"
            try:   # a drawn combination the config rejects (e.g. start > stop) fails this trial, by name
                t = Task(task.kind, with_values(task.cfg, ov), task.data_uri, f"{task.ckpt_dir}/trial-{tid}",
                         task.run_dir, task.payload)
                fn(t, LocalWorld(self.device), report)
                status = "FINISHED"
            except (ValueError, RuntimeError) as e:   # a failed trial is recorded, the sweep goes on
                res.error = f"{type(e).__name__}: {e}"
            finally:
                child.close(status)
            storage.write_text(rec_uri, json.dumps({"overrides": ov, "done": True, "metrics": res.metrics,
                                                    "reports": res.reports, "error": res.error}, default=str))
            if ask is not None:
                value = res.metrics.get(trials.metric)
                if res.error is None and value is not None:
                    study.tell(ask, float(value))
                else:
                    study.tell(ask, state=optuna.trial.TrialState.FAIL)
            else:
                _tell(study, dists, res, trials.metric)
            out.append(res)
        if restored:
            for r in out:
                r.restored = True
        return out


def _records(rec_dir: str, n: int) -> list[dict[str, Any] | None]:
    """The recorded trials of an earlier run of this sweep (None where a trial never started)."""
    out: list[dict[str, Any] | None] = []
    for k in range(n):
        uri = storage.join(rec_dir, f"trial-{k:04d}.json")
        out.append(storage.load_json(storage.read_bytes(uri), uri) if storage.exists(uri) else None)
    return out


def _tell(study: Any, dists: Any, res: TrialResult, metric: str) -> None:
    """Add a trial that did not come from ``study.ask`` (restored or re-run) to the Optuna study."""
    if study is None:
        return
    import optuna

    value = res.metrics.get(metric)
    ok = res.error is None and value is not None
    study.add_trial(optuna.trial.create_trial(
        params=res.overrides, distributions=dists, value=float(value) if ok else None,
        state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL))


__all__ = ["Task", "WorkerFn", "TrialFn", "TrialResult", "TrialSpace", "Launcher", "LocalLauncher"]
