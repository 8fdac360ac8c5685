"""Ray Data for ``RayLauncher.map_shards``: ``range(#pending) -> map_batches(actor pool of producers) ->
map_batches(publish)``, streamed; a shard is the unit of work, retry and commit."""
from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import numpy as np

from .runtime import ensure_ray


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


def map_shards(cfg: Any, make_producer, pending: Sequence[int], publish, on_done) -> None:
    """``RayLauncher.map_shards``: Ray Data over the pending shards, published as they complete."""
    import ray

    if not pending:
        return
    res = cfg.resources
    ensure_ray(res)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = False
    ctx.max_errored_blocks = 0  # a failed shard fails the job (after retries): never silent data loss
    n = len(pending)
    pool: dict[str, Any] = {"size": max(1, int(res.num_workers))}
    if cfg.generate.max_in_flight:
        pool["max_tasks_in_flight_per_actor"] = cfg.generate.max_in_flight
    ds = ray.data.range(n, override_num_blocks=min(n, 1000))
    ds = ds.map_batches(ShardActor, fn_constructor_kwargs={"make_producer": make_producer,
                                                            "pending": np.asarray(pending, np.int64)},
                        batch_size=1, compute=ray.data.ActorPoolStrategy(**pool),
                        num_cpus=res.cpus_per_worker, num_gpus=1 if res.use_gpu else 0, zero_copy_batch=True)
    ds = ds.map_batches(_publish_batch, fn_kwargs={"publish": publish}, batch_size=1, num_cpus=0.1)
    from ..generate import ShardStats

    for row in ds.iter_rows():
        on_done(ShardStats.from_dict(json.loads(row["stats"])))


__all__ = ["map_shards", "ShardActor"]
