"""Stage: generate synthetic images for the under-represented classes into WebDataset shards.

plan -> (per worker: ImageGenerator -> FilterStage -> tar bytes, the shard's stats as its first member) ->
atomic shard publish (one write) -> manifest. The launcher decides where producers run (here in a for-loop,
sample then encode; on Ray a sampler actor pool feeding a CPU encode + publish stage); the shard is the unit of
work, retry and commit, so a killed run loses at most the shards in flight and a re-run (same plan, same
output) skips published shards and regenerates the rest bit-identically (per-row seeds).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from .. import storage
from ..config import Config
from ..generate import (FilterSpec, FilterStage, GenerationPlan, ImageGenerator, ShardProducer, ShardStats,
                        build_manifest, checkpoint_digest, generation_settings, publish_shard, read_rounds,
                        read_stats, samples_per_shard, scan_output, write_manifest)
from ..generate.manifest import check_claim, claim_output, claim_round, release_claim
from ..train import checkpoint as ckpt_io
from ..train import resolve_device
from .launcher import Launcher
from .run import Run
from .verify import verify_output


@dataclass(frozen=True)
class GenerationSetup:
    """Everything a producer needs, resolved on the driver (cheap: no model is built there); picklable."""

    cfg: Config
    plan: GenerationPlan
    output_uri: str
    checkpoint: str            # the resolved diffusion checkpoint file
    checkpoint_digest: str
    classifier: str            # the resolved classifier checkpoint file ("" = no filter)
    class_names: tuple[str, ...] = ()   # written into the manifest (from the checkpoint, else the dataset)

    def producer(self) -> ShardProducer:
        """Built once per worker, in the worker's process (so its device is that process's)."""
        device = resolve_device(self.cfg.resources)
        gen = ImageGenerator(self.cfg, self.checkpoint, device, checkpoint_digest=self.checkpoint_digest)
        flt = FilterStage(FilterSpec.from_config(self.cfg, self.classifier, str(device)))
        return ShardProducer(self.plan, gen, flt, self.cfg.generate.batch_size)


def plan_class_names(cfg: Config, ck: dict[str, Any], num_classes: int) -> tuple[str, ...]:
    """Class names for the manifest: the diffusion checkpoint's (``extra.class_names``), else the dataset's when
    the plan's counts came from it, else ``"0".."C-1"``."""
    extra = ck.get("extra") if isinstance(ck.get("extra"), dict) else {}
    names = extra.get("class_names")
    if isinstance(names, (list, tuple)) and len(names) == num_classes:
        return tuple(str(n) for n in names)
    if not cfg.generate.counts and not extra.get("counts"):
        from .data import stage_data

        names = stage_data(cfg)[0].train.class_names
        if len(names) == num_classes:
            return tuple(str(n) for n in names)
    return tuple(str(c) for c in range(num_classes))


def plan_counts(cfg: Config, checkpoint: str, ck: dict[str, Any] | None = None) -> tuple[int, ...]:
    """Real per-class counts the plan tops up: config, else the diffusion checkpoint's, else the dataset's."""
    if cfg.generate.counts:
        return tuple(cfg.generate.counts)
    extra = (ck if ck is not None else ckpt_io.load(checkpoint)).get("extra") or {}
    if extra.get("counts"):
        return tuple(int(c) for c in extra["counts"])
    from .data import stage_data

    return tuple(stage_data(cfg)[0].train.counts.counts)


@dataclass(frozen=True)
class ModelShape:
    """What a checkpoint consumes or produces: image side, channels, classes."""

    image_size: int
    channels: int
    num_classes: int

    def text(self) -> str:
        return f"{self.image_size}x{self.image_size}x{self.channels}, {self.num_classes} classes"


def _weights_match(model_cls: Callable[[], Any], weights: Any, uri: str, what: str) -> None:
    """The checkpoint's weights have the keys and shapes of the architecture it records (built on the
    ``meta`` device: no memory, no compute), so the model will load on the workers."""
    import torch

    if not isinstance(weights, dict):
        raise ckpt_io.CheckpointError(f"{uri}: {what} weights are missing (an old or foreign checkpoint?)")
    with torch.device("meta"):
        model = model_cls()
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(getattr(v, "shape", ())) for k, v in weights.items()}
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing or unexpected or wrong:
        first = (f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}" if unexpected
                 else f"{wrong[0]!r} is {got[wrong[0]]}, the architecture needs {want[wrong[0]]}")
        raise ckpt_io.CheckpointError(
            f"{uri}: {what} weights do not fit the architecture recorded in the checkpoint ({len(missing)} "
            f"missing, {len(unexpected)} unexpected, {len(wrong)} wrong-shaped tensors; first: {first}); the "
            f"file is damaged, old or not from ltaug: retrain or use another checkpoint")


def check_diffusion_checkpoint(uri: str, ck: dict[str, Any], use_ema: bool = True) -> ModelShape:
    """Kind, architecture record and weights of a diffusion checkpoint; its image shape and class count."""
    from ..diffusion import UNet
    from ..diffusion.unet import UNetSpec

    if ck.get("kind") != "diffusion":
        raise ckpt_io.CheckpointError(f"{uri}: a {ck.get('kind')!r} checkpoint, not a diffusion one; set "
                                      f"model.checkpoint to a train_diffusion checkpoint")
    extra = ck.get("extra") if isinstance(ck.get("extra"), dict) else {}
    if not isinstance(extra.get("spec"), dict):
        raise ckpt_io.CheckpointError(f"{uri}: no architecture record (extra.spec); an old or foreign checkpoint: "
                                      f"retrain with this version of ltaug")
    spec = UNetSpec.from_record(dict(extra["spec"]), uri)
    weights = ck["ema"] if (use_ema and ck.get("ema") is not None) else ck.get("model")
    _weights_match(lambda: UNet(spec), weights, uri, "diffusion")
    return ModelShape(int(spec.image_size), int(spec.in_channels), int(spec.num_classes))


def check_classifier_checkpoint(uri: str, ck: dict[str, Any]) -> tuple[ModelShape, bool]:
    """Kind, architecture and weights of a classifier checkpoint; its input shape, class count, and whether it
    has a feature bank of ``num_classes`` centres (needed by the ID/AID/OOD filter)."""
    from ..classify import build_classifier
    from ..classify.resnet import ModelSpec

    extra = ck.get("extra") if isinstance(ck.get("extra"), dict) else {}
    if ck.get("kind") != "classifier" or not isinstance(extra.get("model_spec"), dict):
        raise ckpt_io.CheckpointError(f"{uri}: not a classifier checkpoint (kind {ck.get('kind')!r}); set "
                                      f"classifier.checkpoint to a train_classifier checkpoint")
    try:
        spec = ModelSpec(**extra["model_spec"])
    except TypeError as e:
        raise ckpt_io.CheckpointError(f"{uri}: classifier record extra.model_spec is not readable ({e}); an old "
                                      f"or foreign checkpoint: retrain with this version of ltaug") from None
    weights = ck["ema"] if extra.get("use_ema") and ck.get("ema") is not None else ck.get("model")
    _weights_match(lambda: build_classifier(spec), weights, uri, "classifier")
    shape = ModelShape(int(spec.image_size), int(spec.in_channels), int(spec.num_classes))
    bank = extra.get("feature_bank")
    if isinstance(bank, dict) and "centers" in bank:
        n = int(getattr(bank["centers"], "shape", (0,))[0])
        if n != shape.num_classes:
            raise ckpt_io.CheckpointError(f"{uri}: feature bank has {n} class centres but the classifier "
                                          f"{shape.num_classes} classes; the checkpoint is inconsistent")
    return shape, isinstance(bank, dict)


def check_compatible(diff: ModelShape, diff_uri: str, clf: ModelShape, clf_uri: str, role: str) -> None:
    """The classifier sees exactly what the diffusion model makes: same image side, channels and classes."""
    problems = []
    if clf.image_size != diff.image_size:
        problems.append(f"image size {clf.image_size} vs {diff.image_size}")
    if clf.channels != diff.channels:
        problems.append(f"channels {clf.channels} vs {diff.channels}")
    if clf.num_classes != diff.num_classes:
        problems.append(f"classes {clf.num_classes} vs {diff.num_classes}")
    if problems:
        raise ValueError(f"classifier.checkpoint {clf_uri} ({clf.text()}) does not match model.checkpoint "
                         f"{diff_uri} ({diff.text()}): {'; '.join(problems)}. The {role} needs a classifier trained "
                         f"on the same data at the same image size; retrain it or pick the matching checkpoint")


def setup_generation(cfg: Config, run_dir: str) -> GenerationSetup:
    """Resolve the output, the checkpoints (a file or the newest valid one of a directory) and the plan.

    Everything the plan depends on is loaded and checked here, before the output is claimed (at the start of
    :func:`run_generation`): the diffusion checkpoint's kind, architecture and weights; the classifier's, and
    that it takes the diffusion model's image size, channels and classes; the per-class counts' length. A
    run that fails these checks leaves its output untouched, so a corrected re-run works in place."""
    if not cfg.model.checkpoint:
        raise ValueError("model.checkpoint: set the diffusion checkpoint to generate from (local or s3://)")
    output_uri = cfg.generate.output_uri or storage.join(run_dir, "shards")
    storage.check_access(output_uri, write=True)
    dck = ckpt_io.open_checkpoint(cfg.model.checkpoint)
    ckpt = dck["_uri"]
    shape = check_diffusion_checkpoint(ckpt, dck, cfg.sample.use_ema)
    clf = ""
    needs_clf = cfg.guidance.minority.scale > 0 and cfg.guidance.minority.distance == "classifier"
    if needs_clf and not cfg.classifier.checkpoint:
        raise ValueError("classifier.checkpoint: guidance.minority.distance=classifier needs a classifier checkpoint")
    if cfg.classifier.checkpoint:
        cck = ckpt_io.open_checkpoint(cfg.classifier.checkpoint)
        clf = cck["_uri"]
        cshape, has_bank = check_classifier_checkpoint(clf, cck)
        check_compatible(shape, ckpt, cshape, clf, "filter" + (" and minority guidance" if needs_clf else ""))
        if not has_bank:
            raise ValueError(f"classifier.checkpoint {clf}: the classifier checkpoint has no feature bank (an "
                             f"intermediate checkpoint?); use the final one of train_classifier")
        del cck
    counts = plan_counts(cfg, ckpt, dck)
    names = plan_class_names(cfg, dck, shape.num_classes) if len(counts) == shape.num_classes else ()
    del dck
    if len(counts) != shape.num_classes:
        where = "generate.counts" if cfg.generate.counts else f"the per-class counts of {ckpt} (or the dataset)"
        raise ValueError(f"{where}: {len(counts)} classes but model.checkpoint {ckpt} has {shape.num_classes}; "
                         f"set generate.counts to {shape.num_classes} entries or use the matching checkpoint")
    digest = checkpoint_digest(ckpt)
    settings = {"generator": generation_settings(cfg, digest),
                "filter": {"keep": list(cfg.filter.keep) if clf else ["*"]},
                "classifier_digest": checkpoint_digest(clf) if clf else ""}
    shard_size = cfg.generate.shard_size
    if cfg.generate.shard_target_mb:
        shard_size = samples_per_shard(cfg.generate.shard_target_mb, shape.image_size, shape.channels)
    plan = GenerationPlan.from_counts(counts, cfg.generate.target_per_class, cfg.generate.budget,
                                      cfg.generate.seed, shard_size, settings)
    return GenerationSetup(cfg, plan, output_uri, ckpt, digest, clf, names)


Progress = Callable[[ShardStats, int, int], None]
GRID_STATS_READS = 32     # shards whose full stats the grid reads back for dropped previews


def run_generation(setup: GenerationSetup, launcher: Launcher, *, on_progress: Progress | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Generate every unpublished shard of ``setup.plan`` (and of its refill rounds) into ``setup.output_uri``;
    write the manifest. The output is listed once; published shards are checked and their stats read
    concurrently. Returns ``{manifest, manifest_uri, new_shards, skipped_shards, damaged_shards, rounds, stats,
    seconds, images_per_s}`` (``stats``: the slim stats of every shard)."""
    plan, out, gcfg = setup.plan, setup.output_uri, setup.cfg.generate
    damaged: list[str] = []
    created = claim_output(out, plan)         # atomic: of two jobs on one output, one wins
    fresh: list[ShardStats] = []
    t0 = time.perf_counter()
    try:
        plans = read_rounds(out, plan)
        scanned = scan_output(out, plans, on_damaged=lambda name, why: damaged.append(f"{name}: {why}"))
        have = {d: {s: st.slim() for s, st in by.items()} for d, by in scanned.items()}
        del scanned
        skipped = sum(len(v) for v in have.values())
        if damaged:
            log(f"warning: {len(damaged)} published shard(s) of {out} are damaged and will be generated again: "
                + "; ".join(damaged[:5]))

        def publish(data: bytes, st: ShardStats) -> str:
            check_claim(out, plan)            # still ours: one read of the plan file (never a listing per shard)
            return publish_shard(out, data, st)

        r = 0
        while True:
            p = plans[r]
            done = have.setdefault(p.digest, {})
            pending = [s for s in range(p.num_shards) if s not in done]

            def on_done(st: ShardStats, _done=done, _n=len(pending), _start=len(fresh)) -> None:
                st = st.slim()
                _done[st.shard] = st
                fresh.append(st)
                if on_progress is not None:
                    on_progress(st, len(fresh) - _start, _n)

            producer = (setup if p is plan else replace(setup, plan=p)).producer
            launcher.map_shards(producer, pending, publish, on_done, retries=gcfg.max_shard_retries)
            r += 1
            if r >= len(plans):
                shortfall = _shortfall(plan, have)
                if r >= gcfg.max_rounds or not any(shortfall):
                    break
                base = [sum(q.budget[c] for q in plans) for c in range(plan.num_classes)]
                plans.append(claim_round(out, plan.refill(r, shortfall, base)))
                log(f"refill round {r} ({plans[r].digest}): {sum(plans[r].budget)} more image(s) for the classes "
                    f"below target: " + " ".join(f"{c}:{n}" for c, n in enumerate(plans[r].budget) if n))
    except BaseException:
        if created and not damaged:
            release_claim(out, plan)         # nothing of ours was published: leave the output as we found it
        raise
    seconds = time.perf_counter() - t0
    stats = [have[p.digest][s] for p in plans for s in sorted(have.get(p.digest, {}))]
    manifest = build_manifest(plan, stats, setup.class_names, plans[1:], gcfg.max_rounds)
    check_claim(out, plan)                    # re-checked before the manifest commits the output
    manifest_uri = write_manifest(out, manifest)
    made = sum(sum(st.generated.values()) for st in fresh)
    return {"manifest": manifest, "manifest_uri": manifest_uri, "new_shards": len(fresh), "skipped_shards": skipped,
            "damaged_shards": len(damaged), "rounds": len(plans), "stats": stats,
            "seconds": round(seconds, 3), "images_per_s": round(made / seconds, 3) if seconds > 0 and made else 0.0}


def _shortfall(plan: GenerationPlan, have: dict[str, dict[int, ShardStats]]) -> list[int]:
    """Per class: the root plan's budget (the target) minus what every round so far kept."""
    kept = [0] * plan.num_classes
    for by in have.values():
        for st in by.values():
            for c, n in st.kept.items():
                kept[c] += n
    return [max(0, int(b) - k) for b, k in zip(plan.budget, kept)]


def generate(cfg: Config, run: Run, launcher: Launcher, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """summary: output_uri, manifest (URI), plan, requested, written, dropped, per-class counts, categories,
    new_shards, skipped_shards, rounds, shortfall_per_class, shard_size, mean_shard_mb, images_per_s, seconds."""
    setup = setup_generation(cfg, run.dir)
    plan = setup.plan
    log(f"plan {plan.digest}: {plan.total} images in {plan.num_shards} shards of {plan.shard_size} -> "
        f"{setup.output_uri}; per-class budget " + " ".join(f"{c}:{n}" for c, n in enumerate(plan.budget)))
    run.tracker.set_tags({"ltaug.plan": plan.digest, "ltaug.output_uri": setup.output_uri})

    def progress(st: ShardStats, k: int, n: int) -> None:
        kept, gen = sum(st.kept.values()), sum(st.generated.values())
        log(f"[{k}/{n}] {st.name}: generated {gen} kept {kept} dropped {gen - kept} ({st.seconds:.1f}s)")
        run.tracker.log_metrics({"shards_done": k, "shard_seconds": st.seconds}, step=k)

    res = run_generation(setup, launcher, on_progress=progress, log=log)
    man = res["manifest"]
    log(f"done: {res['new_shards']} new shard(s), {res['skipped_shards']} already published; requested "
        f"{man['requested']} written {man['written']} dropped {man['dropped']} ({res['images_per_s']} img/s)"
        + (f"; {res['rounds']} round(s), shortfall per class {man['shortfall_per_class']}"
           if res["rounds"] > 1 or cfg.generate.max_rounds > 1 else ""))
    run.tracker.log_metrics({"requested": man["requested"], "written": man["written"], "dropped": man["dropped"],
                             "images_per_s": res["images_per_s"], "new_shards": res["new_shards"]})
    run.write_json("manifest.json", man)
    grid = generation_grid(setup, res["stats"], run.local("generated_grid.png"), cfg.eval.grid_per_class)
    run.publish(grid, "generated_grid.png", "plots")
    pc = man["per_class"]
    return {"output_uri": setup.output_uri, "manifest": res["manifest_uri"], "plan": plan.digest,
            "grid": run.path("generated_grid.png"),
            "requested": man["requested"], "written": man["written"], "dropped": man["dropped"],
            "requested_per_class": pc["requested"], "generated_per_class": pc["generated"],
            "written_per_class": pc["kept"], "dropped_per_class": pc["dropped"], "categories": man["categories"],
            "new_shards": res["new_shards"], "skipped_shards": res["skipped_shards"], "rounds": res["rounds"],
            "shortfall_per_class": man["shortfall_per_class"], "shard_size": plan.shard_size,
            "mean_shard_mb": man["mean_shard_mb"], "images_per_s": res["images_per_s"], "seconds": res["seconds"]}


def generation_grid(setup: GenerationSetup, stats: list[ShardStats], path: str, per_class: int = 8) -> str:
    """A labelled picture of what generation made: per class, kept samples (read back from the first shards that
    hold them) beside dropped ones (the previews each shard's stats keep), with the class totals."""
    import base64

    from ..data.shards import iter_samples
    from ..eval import plots

    plan, K = setup.plan, setup.plan.num_classes
    shown = {c: 0 for c, n in enumerate(plan.budget) if n}
    kept: list[np.ndarray] = []
    kept_labels: list[int] = []
    for st in stats:                                   # interleaved shards: usually one or two suffice
        if all(n >= per_class for n in shown.values()):
            break
        if not sum(st.kept.values()):
            continue
        for sample in iter_samples(storage.join(setup.output_uri, st.name)):
            c = int(sample["cls"])
            if shown.get(c, per_class) < per_class:
                kept.append(_decode_png(sample["png"]))
                kept_labels.append(c)
                shown[c] += 1
    dropped: list[np.ndarray] = []
    dropped_labels: list[int] = []
    with_drops = [st for st in stats if sum(st.dropped.values())][:GRID_STATS_READS]
    for st in with_drops:                          # the driver holds slim stats: previews are read back
        if not st.dropped_preview and st.dropped:
            st = read_stats(setup.output_uri, st.name)
        for key, png in sorted(st.dropped_preview.items()):
            c = int(st.dropped_rows[key][0])
            if dropped_labels.count(c) < max(1, per_class // 2):
                dropped.append(_decode_png(base64.b64decode(png)))
                dropped_labels.append(c)
    totals = ([sum(st.kept.get(c, 0) for st in stats) for c in range(K)],
              [sum(st.dropped.get(c, 0) for st in stats) for c in range(K)])
    stack = lambda xs: np.stack(xs) if xs else np.zeros((0, 1, 1, 1), np.uint8)  # noqa: E731
    return plots.kept_dropped_grid(stack(kept), kept_labels, stack(dropped), dropped_labels, path, K,
                                   setup.class_names, per_class, f"generated: plan {plan.digest}", totals)


def _decode_png(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(data)))
    return a[..., None] if a.ndim == 2 else a


__all__ = ["generate", "verify_output", "setup_generation", "run_generation", "GenerationSetup", "plan_counts"]
