"""Stage: generate synthetic images for the under-represented classes into WebDataset shards.

plan -> (per worker: ImageGenerator -> FilterStage -> tar bytes) -> atomic shard publish -> manifest. The
launcher decides where producers run (a for-loop, or a Ray Data actor pool); the shard is the unit of
work, retry and commit, so a killed run loses at most the shards in flight and a re-run (same plan, same
output) skips published shards and regenerates the rest bit-identically (per-row seeds).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from .. import storage
from ..config import Config
from ..generate import (FilterSpec, FilterStage, GenerationPlan, ImageGenerator, ShardProducer, ShardStats,
                        build_manifest, checkpoint_digest, collect_stats, generation_settings, prepare_output,
                        publish_shard, verify, write_manifest)
from ..train import checkpoint as ckpt_io
from ..train import resolve_checkpoint, resolve_device
from .launcher import Launcher
from .run import Run


@dataclass(frozen=True)
class GenerationSetup:
    """Everything a producer needs, resolved on the driver (cheap: no model is built there); picklable."""

    cfg: Config
    plan: GenerationPlan
    output_uri: str
    checkpoint: str            # the resolved diffusion checkpoint file
    checkpoint_digest: str
    classifier: str            # the resolved classifier checkpoint file ("" = no filter)

    def producer(self) -> ShardProducer:
        """Built once per worker, in the worker's process (so its device is that process's)."""
        device = resolve_device(self.cfg.resources)
        gen = ImageGenerator(self.cfg, self.checkpoint, device, checkpoint_digest=self.checkpoint_digest)
        flt = FilterStage(FilterSpec(self.classifier, tuple(self.cfg.filter.keep), str(device),
                                     self.cfg.classifier.eval_batch_size))
        return ShardProducer(self.plan, gen, flt, self.cfg.generate.batch_size)


def plan_counts(cfg: Config, checkpoint: str) -> tuple[int, ...]:
    """Real per-class counts the plan tops up: config, else the diffusion checkpoint's, else the dataset's."""
    if cfg.generate.counts:
        return tuple(cfg.generate.counts)
    extra = ckpt_io.load(checkpoint).get("extra") or {}
    if extra.get("counts"):
        return tuple(int(c) for c in extra["counts"])
    from .data import stage_data

    return tuple(stage_data(cfg)[0].train.counts.counts)


def setup_generation(cfg: Config, run_dir: str) -> GenerationSetup:
    """Resolve the output, the checkpoints (a file or the newest valid one of a directory) and the plan."""
    if not cfg.model.checkpoint:
        raise ValueError("model.checkpoint: set the diffusion checkpoint to generate from (local or s3://)")
    output_uri = cfg.generate.output_uri or storage.join(run_dir, "shards")
    storage.check_access(output_uri, write=True)
    ckpt = resolve_checkpoint(cfg.model.checkpoint)
    clf = resolve_checkpoint(cfg.classifier.checkpoint) if cfg.classifier.checkpoint else ""
    digest = checkpoint_digest(ckpt)
    settings = {"generator": generation_settings(cfg, digest),
                "filter": {"keep": list(cfg.filter.keep) if clf else ["*"]},
                "classifier_digest": checkpoint_digest(clf) if clf else ""}
    plan = GenerationPlan.from_counts(plan_counts(cfg, ckpt), cfg.generate.target_per_class, cfg.generate.budget,
                                      cfg.generate.seed, cfg.generate.shard_size, settings)
    return GenerationSetup(cfg, plan, output_uri, ckpt, digest, clf)


Progress = Callable[[ShardStats, int, int], None]


def run_generation(setup: GenerationSetup, launcher: Launcher, *, on_progress: Progress | None = None) -> dict[str, Any]:
    """Generate every unpublished shard of ``setup.plan`` into ``setup.output_uri``; write the manifest.

    Returns ``{manifest, manifest_uri, new_shards, skipped_shards, seconds, images_per_s}``.
    """
    plan, out = setup.plan, setup.output_uri
    done = prepare_output(out, plan)
    done_set = set(done)
    pending = [s for s in range(plan.num_shards) if s not in done_set]
    t0 = time.perf_counter()
    fresh: list[ShardStats] = []

    def on_done(st: ShardStats) -> None:
        fresh.append(st)
        if on_progress is not None:
            on_progress(st, len(fresh), len(pending))

    launcher.map_shards(setup.producer, pending, lambda data, st: publish_shard(out, data, st), on_done)
    seconds = time.perf_counter() - t0
    stats = {st.shard: st for st in fresh}
    stats.update({st.shard: st for st in collect_stats(out, plan, [s for s in done if s not in stats])})
    manifest = build_manifest(plan, stats.values())
    manifest_uri = write_manifest(out, manifest)
    made = sum(sum(st.generated.values()) for st in fresh)
    return {"manifest": manifest, "manifest_uri": manifest_uri, "new_shards": len(fresh), "skipped_shards": len(done),
            "seconds": round(seconds, 3), "images_per_s": round(made / seconds, 3) if seconds > 0 and made else 0.0}


def generate(cfg: Config, run: Run, launcher: Launcher, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """summary: output_uri, manifest (URI), plan, requested, written, dropped, per-class counts, categories,
    new_shards, skipped_shards, images_per_s, seconds."""
    setup = setup_generation(cfg, run.dir)
    plan = setup.plan
    log(f"plan {plan.digest}: {plan.total} images in {plan.num_shards} shards of {plan.shard_size} -> "
        f"{setup.output_uri}; per-class budget " + " ".join(f"{c}:{n}" for c, n in enumerate(plan.budget)))
    run.tracker.set_tags({"ltaug.plan": plan.digest, "ltaug.output_uri": setup.output_uri})

    def progress(st: ShardStats, k: int, n: int) -> None:
        kept, gen = sum(st.kept.values()), sum(st.generated.values())
        log(f"[{k}/{n}] {st.name}: generated {gen} kept {kept} dropped {gen - kept} ({st.seconds:.1f}s)")
        run.tracker.log_metrics({"shards_done": k, "shard_seconds": st.seconds}, step=k)

    res = run_generation(setup, launcher, on_progress=progress)
    man = res["manifest"]
    log(f"done: {res['new_shards']} new shard(s), {res['skipped_shards']} already published; requested "
        f"{man['requested']} written {man['written']} dropped {man['dropped']} ({res['images_per_s']} img/s)")
    run.tracker.log_metrics({"requested": man["requested"], "written": man["written"], "dropped": man["dropped"],
                             "images_per_s": res["images_per_s"], "new_shards": res["new_shards"]})
    run.write_json("manifest.json", man)
    pc = man["per_class"]
    return {"output_uri": setup.output_uri, "manifest": res["manifest_uri"], "plan": plan.digest,
            "requested": man["requested"], "written": man["written"], "dropped": man["dropped"],
            "requested_per_class": pc["requested"], "generated_per_class": pc["generated"],
            "written_per_class": pc["kept"], "dropped_per_class": pc["dropped"], "categories": man["categories"],
            "new_shards": res["new_shards"], "skipped_shards": res["skipped_shards"],
            "images_per_s": res["images_per_s"], "seconds": res["seconds"]}


def verify_output(cfg: Config, run: Run, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Check ``generate.output_uri`` (default: this config's shards) against its plan; an error when not OK."""
    out = cfg.generate.output_uri or run.path("shards")
    rep = verify(out)
    for p in rep.problems:
        log(f"problem: {p}")
    log(f"verify {out}: plan {rep.plan}  shards {rep.shards_found}/{rep.shards_expected}  samples {rep.samples}  "
        f"dropped {rep.dropped}  missing {rep.missing}  duplicates {rep.duplicates}  bad {rep.bad}  "
        f"-> {'OK' if rep.ok else 'FAILED'}")
    run.tracker.log_metrics({"verify_ok": float(rep.ok), "verify_missing": rep.missing,
                             "verify_duplicates": rep.duplicates, "verify_bad": rep.bad, "verify_samples": rep.samples})
    run.write_json("verify.json", rep.to_dict())
    if not rep.ok:
        raise ValueError(f"verify failed for {out}: {len(rep.problems)} problem(s); first: {rep.problems[0]}")
    return {"output_uri": out, "verify": rep.to_dict()}


__all__ = ["generate", "verify_output", "setup_generation", "run_generation", "GenerationSetup", "plan_counts"]
