"""Inspect a dataset as configured: per-class train/test counts after the long-tail profile,
many/medium/few groups, a class histogram PNG. Writes summary.json; prints the run dir last.

    python jobs/inspect_data.py --config configs/quickstart.yaml
    python jobs/inspect_data.py --config configs/quickstart.yaml \\
        --set data.source=cifar10 --set data.root=s3://bucket/cifar-10-batches-py --set data.imbalance_ratio=100
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # ray job submit --working-dir .

from ltaug.cli import job_main
from ltaug.data import load_dataset
from ltaug.eval import plots


def body(cfg, run, args) -> dict:
    data = load_dataset(cfg.data)
    train, test = data.train.counts.counts, data.test.counts.counts
    print(f"source: {cfg.data.source}  root: {cfg.data.root or '(embedded)'}  classes: {data.num_classes}  "
          f"image: {data.train.image_size}x{data.train.image_size}x{data.train.channels}")
    print(f"profile: {cfg.data.profile}  r = {cfg.data.imbalance_ratio:g}  "
          f"(measured {data.counts.imbalance_ratio:.1f})  train total {sum(train)}  test total {sum(test)}")
    group_of = {c: g for g, cs in data.groups.items() for c in cs}
    print(f"{'class':>6} {'name':>14} {'train':>7} {'test':>6}  group")
    names = data.train.class_names
    for c in range(data.num_classes):
        print(f"{c:>6} {names[c] if c < len(names) else c!s:>14} {train[c]:>7} {test[c]:>6}  {group_of.get(c, '')}")
    print("groups: " + ", ".join(f"{g} {len(v)} classes" for g, v in data.groups.items()))
    skipped = {"train": data.train.skipped, "test": data.test.skipped}
    if any(skipped.values()):
        print(f"skipped bad records: {skipped}")
    png = plots.class_histogram(train, run.local("class_histogram.png"), class_names=names,
                                title=f"{cfg.data.source}: train images per class (r={cfg.data.imbalance_ratio:g})",
                                groups=data.groups, log_scale=data.counts.imbalance_ratio >= 20)
    run.publish(png, "class_histogram.png", "plots")
    run.tracker.log_metrics({"train_total": sum(train), "test_total": sum(test), "num_classes": data.num_classes,
                             "imbalance_ratio": data.counts.imbalance_ratio})
    return {"train_counts": list(train), "test_counts": list(test), "groups": data.groups,
            "skipped": skipped, "class_names": list(names), "histogram": run.path("class_histogram.png")}


if __name__ == "__main__":
    sys.exit(job_main("inspect_data", __doc__.split("\n\n")[0], body))
