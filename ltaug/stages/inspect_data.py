"""Stage: the dataset as configured — per-class train/val/test counts after the long-tail profile, the
validation split (and what it held out of train), many/medium/few groups, skipped records, a class
histogram PNG."""
from __future__ import annotations

from typing import Any

from ..config import Config
from ..data.dataset import val_note, val_report
from ..eval import plots
from .data import stage_data
from .launcher import Launcher
from .run import Run


def inspect_data(cfg: Config, run: Run, launcher: Launcher | None = None) -> dict[str, Any]:
    """summary: train_counts, val_counts, val_held_out, test_counts, groups, skipped, class_names, histogram, dataset,
    profile (ratio in effect, source / kept / dropped images), warnings (e.g. a profile dropping most images)."""
    data, data_uri = stage_data(cfg)
    train, test = data.train.counts.counts, data.test.counts.counts
    val = data.validation.counts.counts
    held = val_report(data)["val_held_out"]
    print(f"source: {cfg.data.source}  root: {cfg.data.root or '(embedded)'}  classes: {data.num_classes}  "
          f"image: {data.train.image_size}x{data.train.image_size}x{data.train.channels}")
    prof = dict(data.profile)
    r_note = "" if cfg.data.imbalance_ratio else " (source default)"
    print(f"profile: {prof.get('profile', cfg.data.profile)}  r = {cfg.data.ratio:g}{r_note}  "
          f"(measured {data.counts.imbalance_ratio:.1f})  train total {sum(train)}  val total {sum(val)}  "
          f"test total {sum(test)}")
    if prof.get("source_images"):
        print(f"source train images {prof['source_images']}: kept {prof['kept_images']}, dropped "
              f"{prof['dropped_images']} ({100 * prof['dropped_fraction']:.0f}%) by the profile")
    if prof.get("warning"):
        print(f"WARNING: {prof['warning']}")
    print(val_note(data))
    group_of = {c: g for g, cs in data.groups.items() for c in cs}
    print(f"{'class':>6} {'name':>14} {'train':>7} {'val':>5} {'held':>5} {'test':>6}  group")
    names = data.train.class_names
    for c in range(data.num_classes):
        print(f"{c:>6} {names[c] if c < len(names) else c!s:>14} {train[c]:>7} {val[c]:>5} {held[c]:>5} {test[c]:>6}"
              f"  {group_of.get(c, '')}")
    print("groups: " + ", ".join(f"{g} {len(v)} classes" for g, v in data.groups.items()))
    skipped = {"train": data.train.skipped, "test": data.test.skipped}
    if any(skipped.values()):
        print(f"skipped bad records: {skipped}")
    png = plots.class_histogram(train, run.local("class_histogram.png"), class_names=names,
                                title=f"{cfg.data.source}: train images per class (r={cfg.data.ratio:g})",
                                groups=data.groups, log_scale=data.counts.imbalance_ratio >= 20)
    run.publish(png, "class_histogram.png", "plots")
    run.tracker.log_metrics({"train_total": sum(train), "val_total": sum(val), "val_held_out": sum(held),
                             "test_total": sum(test), "num_classes": data.num_classes,
                             "imbalance_ratio": data.counts.imbalance_ratio})
    return {"train_counts": list(train), "val_counts": list(val), "val_held_out": held, "test_counts": list(test),
            "groups": data.groups, "skipped": skipped, "class_names": list(names),
            "histogram": run.path("class_histogram.png"), "dataset": data_uri, "profile": prof,
            "warnings": [prof["warning"]] if prof.get("warning") else []}


__all__ = ["inspect_data"]
