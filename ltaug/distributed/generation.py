"""The generation pipeline: plan -> (Ray Data actor pool of generators + filter) -> atomic shard publish -> manifest.

Ray Data shape (``resources.num_workers >= 1``)::

    ray.data.range(#pending shards)                      # a Read op over plan work units, nothing listed on the driver
      .map_batches(ShardWorker, compute=ActorPoolStrategy(size=num_workers), batch_size=1,
                   num_cpus=cpus_per_worker, num_gpus=1 if use_gpu)   # ImageGenerator -> FilterStage -> tar bytes
      .map_batches(publish, batch_size=1)                # stats, then the tar, each one atomic write
      .iter_rows()                                       # streaming; the driver prints progress per shard

A shard (a fixed id range of the plan) is the unit of work and of commit, so a killed actor or job loses
at most the shards in flight; the re-run (same plan, same output) skips published shards and regenerates
the rest bit-identically (per-row seeds). Actors restart and their tasks are retried (Ray Data's
defaults: ``max_restarts=-1``); a retried shard overwrites nothing but itself with identical bytes.
``resources.num_workers = 0`` runs the same ShardProducer in a for-loop, without Ray.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .. import storage
from ..generate import (FilterSpec, FilterStage, GenerationPlan, GeneratorSpec, ImageGenerator, ShardProducer,
                        ShardStats, build_manifest, checkpoint_digest, collect_stats, prepare_output,
                        publish_shard, write_manifest)


@dataclass(frozen=True)
class GenerationSetup:
    plan: GenerationPlan
    output_uri: str
    generator: GeneratorSpec
    filter: FilterSpec
    batch_size: int


def plan_counts(cfg) -> tuple[int, ...]:
    """Real per-class counts the plan tops up: config, else the diffusion checkpoint's, else the dataset's."""
    if cfg.generate.counts:
        return tuple(cfg.generate.counts)
    if cfg.model.checkpoint:
        from ..train import checkpoint as ckpt_io

        extra = ckpt_io.load(cfg.model.checkpoint).get("extra") or {}
        if extra.get("counts"):
            return tuple(int(c) for c in extra["counts"])
    from ..data import load_dataset

    return tuple(load_dataset(cfg.data).train.counts.counts)


def setup_generation(cfg, run_dir: str, device: str = "") -> GenerationSetup:
    """Resolve output, checkpoint digests and the plan (cheap; no model is built on the driver)."""
    if not cfg.model.checkpoint:
        raise ValueError("model.checkpoint: set the diffusion checkpoint to generate from (local or s3://)")
    output_uri = cfg.generate.output_uri or storage.join(run_dir, "shards")
    storage.check_access(output_uri, write=True)
    storage.check_access(cfg.model.checkpoint)
    gspec = GeneratorSpec.from_config(cfg, checkpoint_digest(cfg.model.checkpoint), device)
    fspec = FilterSpec.from_config(cfg, device)
    settings = {"generator": gspec.settings(), "filter": fspec.settings(),
                "classifier_digest": _classifier_digest(cfg.classifier.checkpoint) if fspec.classifier else ""}
    plan = GenerationPlan.from_counts(plan_counts(cfg), cfg.generate.target_per_class, cfg.generate.budget,
                                      cfg.generate.seed, cfg.generate.shard_size, settings)
    return GenerationSetup(plan, output_uri, gspec, fspec, cfg.generate.batch_size)


def _classifier_digest(uri: str) -> str:
    if uri.endswith(".pt"):
        return checkpoint_digest(uri)
    from ..train import checkpoint as ckpt_io

    ckpts = ckpt_io.list_checkpoints(uri)
    return checkpoint_digest(ckpts[-1][1]) if ckpts else ""


def producer_for(setup: GenerationSetup) -> ShardProducer:
    flt = FilterStage(setup.filter)
    return ShardProducer(setup.plan, ImageGenerator(setup.generator), flt, setup.batch_size)


Progress = Callable[[ShardStats, int, int], None]


def run_generation(setup: GenerationSetup, resources: Any, *, on_progress: Progress | None = None,
                   max_in_flight: int = 0) -> dict[str, Any]:
    """Generate every unpublished shard of ``setup.plan`` into ``setup.output_uri``; write the manifest.

    Returns ``{manifest, manifest_uri, new_shards, skipped_shards, seconds, images_per_s}``.
    """
    plan, out = setup.plan, setup.output_uri
    done = prepare_output(out, plan)
    pending = [s for s in range(plan.num_shards) if s not in set(done)]
    t0 = time.perf_counter()
    fresh: list[ShardStats] = []
    total = len(pending)

    def progress(st: ShardStats) -> None:
        fresh.append(st)
        if on_progress is not None:
            on_progress(st, len(fresh), total)

    if pending:
        if getattr(resources, "num_workers", 0) == 0:
            producer = producer_for(setup)
            for s in pending:
                data, st = producer(s)
                publish_shard(out, data, st)
                progress(st)
        else:
            _run_ray(setup, pending, resources, progress, max_in_flight)
    seconds = time.perf_counter() - t0
    stats = {st.shard: st for st in fresh}
    stats.update({st.shard: st for st in collect_stats(out, plan, [s for s in done if s not in stats])})
    manifest = build_manifest(plan, stats.values())
    manifest_uri = write_manifest(out, manifest)
    made = sum(sum(st.generated.values()) for st in fresh)
    return {"manifest": manifest, "manifest_uri": manifest_uri, "new_shards": len(fresh), "skipped_shards": len(done),
            "seconds": round(seconds, 3), "images_per_s": round(made / seconds, 3) if seconds > 0 and made else 0.0}


# ------------------------------------------------------------------------------------------------ Ray


class ShardWorker:
    """Ray Data actor: builds the generator and filter once, then turns pending-shard positions into tars."""

    def __init__(self, setup: GenerationSetup, pending: np.ndarray) -> None:
        self.producer = producer_for(setup)
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


def publish_batch(batch: dict[str, np.ndarray], output_uri: str) -> dict[str, np.ndarray]:
    """Ray Data writer task: publish each shard atomically; pass only the small stats on."""
    for data, st in zip(batch["tar"], batch["stats"]):
        publish_shard(output_uri, bytes(data), ShardStats.from_dict(json.loads(st)))
    return {"shard": np.asarray(batch["shard"]), "stats": np.asarray(batch["stats"], dtype=object)}


def _run_ray(setup: GenerationSetup, pending: list[int], resources: Any, progress: Callable[[ShardStats], None],
             max_in_flight: int = 0) -> None:
    import ray

    from .runtime import ensure_ray

    ensure_ray(resources)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = False
    ctx.max_errored_blocks = 0  # a failed shard fails the job (after retries): never silent data loss
    n = len(pending)
    pool_kwargs: dict[str, Any] = {"size": max(1, int(resources.num_workers))}
    if max_in_flight:
        pool_kwargs["max_tasks_in_flight_per_actor"] = max_in_flight
    ds = ray.data.range(n, override_num_blocks=min(n, 1000))
    ds = ds.map_batches(ShardWorker, fn_constructor_kwargs={"setup": setup, "pending": np.asarray(pending, np.int64)},
                        batch_size=1, compute=ray.data.ActorPoolStrategy(**pool_kwargs),
                        num_cpus=resources.cpus_per_worker, num_gpus=1 if resources.use_gpu else 0,
                        zero_copy_batch=True)
    ds = ds.map_batches(publish_batch, fn_kwargs={"output_uri": setup.output_uri}, batch_size=1, num_cpus=0.1)
    for row in ds.iter_rows():
        progress(ShardStats.from_dict(json.loads(row["stats"])))


__all__ = ["GenerationSetup", "setup_generation", "run_generation", "plan_counts", "producer_for", "ShardWorker",
           "publish_batch"]
