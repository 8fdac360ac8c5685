"""Ray Data for ``RayLauncher.map_shards`` / ``map_verify``.

Generation is two Ray Data stages over ``from_items(#pending, one block per shard)``, streamed:

1. ``map_batches(ShardActor)``, an actor pool of samplers (``resources.num_workers`` actors of
   ``resources.cpus_per_worker`` CPUs, and a GPU each with ``resources.use_gpu``): only samples. Per shard it
   returns the raw rows (uint8 images, labels, seeds, keys, the filter's categories and distances:
   :meth:`ltaug.generate.ShardProducer.sample`) as one pickled value, and goes on with the next shard. Its model
   is built and run on the actor's main thread (:data:`ON_MAIN_THREAD`): one OpenMP team per sampler process.
2. ``map_batches(ShardEncoder)``, an actor pool of encoders with their own ``generate.encode_cpus`` CPUs (1 up
   to ``num_workers`` actors, autoscaled): the filter's keep decision, PNG encoding, the tar with its stats
   member first (:func:`ltaug.generate.encode_shard`) and the shard's single PUT (``publish``, the commit).
   Only slim stats reach the driver.

So the sampler never waits for encoding or storage; the raw shard crosses the object store once (its
uint8 images, about the tar's size), the tar bytes never do. Batch size 1 everywhere: one shard per Ray Data
task in each stage, so the retry unit stays the commit unit, a lost actor loses only its in-flight shards,
and shards are published one by one as they finish. The samplers, plus one encoder, must fit the cluster's
CPUs (checked up front, else Ray would wait forever); a ``range`` read task would need a CPU as well, hence
blocks put from the driver. Faults:

- an application error in either stage is retried in its actor up to ``generate.max_shard_retries`` times
  (:func:`ltaug.generate.retry_shard`: the sampling in the sampler, encode + publish in the encoder, each a
  pure function of the shard), then the job fails with one line naming the shard, nothing published for it
  (Ray Data's ``actor_task_retry_on_errors`` stays off: its retries would not name the shard); a killed actor
  is restarted and its in-flight shards retried by Ray Data's defaults (``max_restarts=-1``,
  ``max_task_retries=-1``; overriding them needs ``**ray_remote_args``, deprecated in 2.60);
- ``resources.use_gpu`` on a cluster without GPUs is refused before anything is scheduled (Ray would wait
  for a GPU forever), and an actor that lands where CUDA is not available fails at construction, naming
  the key and the node (never a silent CPU run); constructor failures are not retried;
- a failed pipeline ``ray.kill``s its actors (each enlists on a :class:`Roster` of the driver's as it starts),
  so they free the cluster's CPUs at once instead of whenever Ray Data's handles are collected.

A producer without ``sample`` (any ``shard -> (tar bytes, stats)`` callable) runs whole in stage 1 and stage 2
only publishes it.

Driver cost of one block per shard grows with the blocks of one execution (Ray Data keeps a block and its
metadata per shard), measured on a loaded 2-core box (benchmarks/bench_scale.py ``block_planning``, private
local Ray, trivial producer, single-stage pipeline): 1,000 blocks: whole run 23.7 s, first result after 7.3 s,
233 MB peak driver RSS (118 MB at start); 10,000 blocks: first result after 29.8 s, 279 MB (the ``range``
variant: ~575 MB). So more than :data:`WINDOW` pending shards run as consecutive executions of ``WINDOW``
shards each: the driver stays bounded, at the price of one actor-pool start (a model load) per window -
negligible against 10,000 shards of work. With ``generate.shard_target_mb`` sized shards (e.g. 256 MB =
43.7k samples at 32x32x3) 10M images are only ~230 shards anyway.

Verify: ``from_items(#shards, one block per shard) -> map_batches(check, task pool)``; each task returns its
shard's small result as JSON.
"""
from __future__ import annotations

import json
import pickle
import re
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .runtime import ensure_ray

# The sampler's calls run on the actor's main thread, where its constructor built the model (Ray Data's default
# wraps a class UDF in a one-thread executor of its own, so the process had two torch threads driving two OpenMP
# teams: 4 threads on the actor's 2 CPUs, whose spin-waits libgomp then throttles). One call at a time either way.
ON_MAIN_THREAD = {"enable_true_multi_threading": True, "max_concurrent_calls_per_actor": 1}
WINDOW = 10_000   # shards (= Ray Data blocks) per execution; more pending shards run as consecutive windows
SHARD_ERROR = re.compile(r"(generate: shard \d+ \([^)]*\) failed[^\n]*|resources\.use_gpu=true[^\n]*)")


class GpuMissingError(RuntimeError):
    """``resources.use_gpu`` but the actor's process has no CUDA: an error, never a CPU run."""


class Roster:
    """The driver's list of one pipeline's actors (a 0-CPU Ray actor): each sampler and encoder enlists its own
    handle when it starts, so a failed pipeline can ``ray.kill`` them all. Ray Data drops its handles on failure
    and leaves the actors to reference counting, but its error's traceback frames keep handles in reference
    cycles: while anything holds them (a caller's caught exception, the executor's thread still running, a full
    collection not yet run), the actors live on with their CPUs and the next pipeline waits for them forever."""

    def __init__(self) -> None:
        self.handles: list[Any] = []

    def enlist(self, handle: Any) -> None:
        self.handles.append(handle)

    def members(self) -> list[Any]:
        return self.handles


def _enlist(roster: Any) -> None:
    """In a pipeline actor's constructor: put its own handle on the driver's roster (waited for, so an actor that
    takes work is always on it)."""
    if roster is not None:
        import ray

        ray.get(roster.enlist.remote(ray.get_runtime_context().current_actor))


def _disband(roster: Any, kill: bool) -> None:
    """End a pipeline's roster; ``kill``: first ``ray.kill`` every actor on it (no restart)."""
    import ray

    if kill:
        for handle in ray.get(roster.members.remote()):
            ray.kill(handle, no_restart=True)
    ray.kill(roster)


class ShardActor:
    """Stage 1, the sampler: builds the producer once, then turns pending-shard positions into raw shards
    (:meth:`~ltaug.generate.ShardProducer.sample`, retried per shard) for the encoder stage."""

    def __init__(self, make_producer: Callable[[], Any], pending: np.ndarray, use_gpu: bool = False,
                 retries: int = 0, roster: Any = None) -> None:
        _enlist(roster)
        if use_gpu:
            import socket

            import torch

            if not torch.cuda.is_available():
                raise GpuMissingError(f"resources.use_gpu=true but CUDA is not available in the generator actor on "
                                      f"{socket.gethostname()} (torch {torch.__version__}); fix the node's GPU "
                                      f"driver or set resources.use_gpu=false (no silent CPU run)")
        self.producer = make_producer()
        self.pending = np.asarray(pending, dtype=np.int64)
        self.retries = int(retries)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..generate import produce_with_retries
        from ..generate.shards import retry_shard, shard_label

        shards, raws = [], []
        sample = getattr(self.producer, "sample", None)
        for pos in np.asarray(batch["id"], dtype=np.int64):
            s = int(self.pending[pos])
            if sample is not None:
                raw: dict[str, Any] = retry_shard(lambda: sample(s), s, shard_label(self.producer, s), self.retries)
            else:
                raw = {"shard": s, "done": produce_with_retries(self.producer, s, self.retries)}
            shards.append(s)
            raws.append(pickle.dumps(raw, protocol=5))
        return {"shard": np.asarray(shards, np.int64), "raw": np.asarray(raws, dtype=object)}


class ShardEncoder:
    """Stage 2, on its own CPUs (``generate.encode_cpus``): raw shard -> keep decision, PNGs, tar (stats member
    first) -> ``publish`` (one PUT, the commit), retried per shard; passes only slim stats on."""

    def __init__(self, publish: Callable[[bytes, Any], Any] | None = None, retries: int = 0,
                 roster: Any = None) -> None:
        _enlist(roster)
        self.publish, self.retries = publish, int(retries)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..generate.shards import encode_shard, retry_shard

        shards, stats = [], []
        for blob in batch["raw"]:
            raw = pickle.loads(bytes(blob))
            s = int(raw["shard"])

            def once(raw=raw):
                data, st = raw["done"] if "done" in raw else encode_shard(raw)
                if self.publish is not None:
                    self.publish(data, st)        # the commit: one atomic write, in the task that made it
                return st

            name = raw["done"][1].name if "done" in raw else raw["name"]
            st = retry_shard(once, s, str(name), self.retries)
            shards.append(s)
            stats.append(json.dumps(st.slim().to_dict()))
        return {"shard": np.asarray(shards, np.int64), "stats": np.asarray(stats, dtype=object)}


def check_cpus(cfg: Any, cluster: dict[str, float]) -> None:
    """Up front: the samplers and one encoder fit the cluster's CPUs (else Ray would wait for them forever)."""
    res = cfg.resources
    need = max(1, int(res.num_workers)) * float(res.cpus_per_worker) + float(cfg.generate.encode_cpus)
    have = float(cluster.get("CPU", 0))
    if need > have + 1e-9:
        raise RuntimeError(f"generate on Ray needs resources.num_workers x resources.cpus_per_worker + "
                           f"generate.encode_cpus = {max(1, int(res.num_workers))} x {res.cpus_per_worker} + "
                           f"{cfg.generate.encode_cpus} = {need:g} CPUs but the Ray cluster has {have:g}; lower "
                           f"them or add nodes")


def check_gpus(cfg: Any, cluster: dict[str, float]) -> None:
    """Up front: ``resources.use_gpu`` needs GPUs in the cluster (else Ray would wait for them forever)."""
    if cfg.resources.use_gpu and cluster.get("GPU", 0) < 1:
        raise GpuMissingError(f"resources.use_gpu=true but the Ray cluster has no GPU resources "
                              f"({ {k: v for k, v in cluster.items() if k in ('CPU', 'GPU')} }); add GPU nodes or set "
                              f"resources.use_gpu=false")


def _clean(e: BaseException) -> BaseException | None:
    """The one-line error of ours inside a Ray Data failure (the shard that kept failing, a missing GPU)."""
    m = SHARD_ERROR.search(str(e))
    return RuntimeError(m.group(1).strip()) if m else None


def _configure(ray: Any) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = False
    ctx.max_errored_blocks = 0  # a failed shard fails the job (after retries): never silent data loss
    ctx.actor_task_retry_on_errors = False       # application errors: retried in the actor, bounded
    ctx.max_consecutive_actor_init_deaths = 0    # a constructor error (no CUDA) fails at once


def map_shards(cfg: Any, make_producer, pending: Sequence[int], publish, on_done, retries: int = 0) -> None:
    """``RayLauncher.map_shards``: Ray Data over the pending shards, one per task, published as they complete."""
    import ray

    if not pending:
        return
    res = cfg.resources
    cluster = ensure_ray(res)
    check_gpus(cfg, cluster)
    check_cpus(cfg, cluster)
    _configure(ray)
    pool: dict[str, Any] = {"size": max(1, int(res.num_workers))}
    if cfg.generate.max_in_flight:
        pool["max_tasks_in_flight_per_actor"] = cfg.generate.max_in_flight
    from ..generate import ShardStats

    pending = np.asarray(pending, np.int64)
    roster_cls = ray.remote(num_cpus=0)(Roster)
    for lo in range(0, len(pending), WINDOW):         # driver memory bounded by WINDOW blocks
        window = pending[lo:lo + WINDOW]
        n = len(window)
        roster = roster_cls.remote()
        # one block = one task = one shard; blocks put from the driver (a ``range`` read task would need a whole
        # CPU, which a cluster filled with generator actors does not have: the pipeline would never start)
        ds = ray.data.from_items([{"id": i} for i in range(n)], override_num_blocks=n)
        ds = ds.map_batches(ShardActor, fn_constructor_kwargs={"make_producer": make_producer, "pending": window,
                                                                "use_gpu": bool(res.use_gpu), "retries": retries,
                                                                "roster": roster},
                            batch_size=1, compute=ray.data.ActorPoolStrategy(**pool, **ON_MAIN_THREAD),
                            num_cpus=res.cpus_per_worker, num_gpus=1 if res.use_gpu else 0, zero_copy_batch=True)
        ds = ds.map_batches(ShardEncoder, fn_constructor_kwargs={"publish": publish, "retries": retries,
                                                                  "roster": roster},
                            batch_size=1, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool["size"]),
                            num_cpus=cfg.generate.encode_cpus, zero_copy_batch=True)
        failure: BaseException | None = None
        failed = True
        try:
            for row in ds.iter_rows():
                on_done(ShardStats.from_dict(json.loads(row["stats"])))
            failed = False
        except Exception as e:  # noqa: BLE001 - re-raised as our one line when it is ours, else unchanged
            failure = _clean(e)
            if failure is None:
                raise
        finally:
            del ds
            _disband(roster, kill=failed)   # a failed pipeline's actors release their CPUs now
        if failure is not None:
            raise failure    # outside the except block: it does not chain (and keep) Ray Data's error


def _verify_batch(batch: dict[str, np.ndarray], check: Callable[[Any], dict]) -> dict[str, np.ndarray]:
    out = [json.dumps(check((int(r), int(s)))) for r, s in zip(batch["round"], batch["shard"])]
    return {"result": np.asarray(out, dtype=object)}


def map_verify(cfg: Any, check: Callable[[Any], dict], items: Sequence[Sequence[int]]) -> Iterable[dict]:
    """``RayLauncher.map_verify``: ``check((round, shard))`` as Ray Data tasks, one shard per task."""
    import ray

    if not items:
        return
    ensure_ray(cfg.resources)
    _configure(ray)
    rows = [{"round": int(r), "shard": int(s)} for r, s in items]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.map_batches(_verify_batch, fn_kwargs={"check": check}, batch_size=1, num_cpus=1)
    for row in ds.iter_rows():
        yield json.loads(row["result"])


__all__ = ["map_shards", "map_verify", "Roster", "ShardActor", "ShardEncoder", "GpuMissingError", "check_gpus",
           "check_cpus"]
