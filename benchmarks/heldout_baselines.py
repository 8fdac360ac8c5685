"""Classical long-tail baselines on a held-out long-tailed dataset (nobody here tunes on it): each method of
``--methods`` trained with ``jobs/train_classifier.py`` on the preset as it is, for every seed, then the mean ±
sample std of test and validation top-1 (All / Many / Medium / Few) and each method's few-class lift over CE.

    python benchmarks/fashion_mnist_npm.py package/src/clothes /tmp/fashion-mnist     # the data (see there)
    python benchmarks/heldout_baselines.py --config configs/fashion-mnist-lt.yaml \
        --set data.root=/tmp/fashion-mnist --methods ce drw ldam_drw --seeds 0 1 2 --out /tmp/heldout.json

Every run is its own ``train_classifier`` run (``run.name=heldout-<method>-s<seed>``: re-running resumes).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ltaug.stages.seeds import aggregate, mean_std  # noqa: E402

KEYS = ("acc_all", "acc_many", "acc_medium", "acc_few")


def run_one(config: list[str], sets: list[str], method: str, seed: int, tag: str) -> dict:
    cmd = [sys.executable, os.path.join(ROOT, "jobs", "train_classifier.py"), *config,
           *[a for s in (*sets, f"classifier.method={method}", f"seed={seed}", f"run.name={tag}-{method}-s{seed}")
             for a in ("--set", s)]]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    run_dir = out.strip().splitlines()[-1]
    with open(os.path.join(run_dir, "summary.json")) as f:
        s = json.load(f)
    print(f"{method:<16} seed {seed}: test all {100 * s['acc_all']:.1f} few {100 * s['acc_few']:.1f}  "
          f"val few {100 * s['val_acc_few']:.1f}  ({time.perf_counter() - t0:.0f}s)", flush=True)
    return {**s, "seed": seed}


def cell(m: dict, k: str) -> str:
    v, sd = m[k], m.get(f"{k}_std")
    return "-" if v is None else f"{100 * v:.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--methods", nargs="+", default=["ce", "drw", "ldam_drw"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--tag", default="heldout")
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    rows = {m: [run_one(["--config", a.config], a.set, m, s, a.tag) for s in a.seeds] for m in a.methods}
    agg = {m: aggregate(r, m) for m, r in rows.items()}
    base = agg.get("ce")
    print(f"\n| method | test all | many | medium | few | val all | val few | few lift over CE (paired) |")
    print("|---|---|---|---|---|---|---|---|")
    for m, g in agg.items():
        lift = "-"
        if base is not None and m != "ce":
            d = [100 * (x["acc_few"] - y["acc_few"]) for x, y in zip(g["seeds"], base["seeds"])]
            mean, sd = mean_std(d, f"{m}.few_lift_over_ce")
            lift = f"{mean:+.1f}" + ("" if sd is None else f" ± {sd:.1f}") + f" ({', '.join(f'{v:+.1f}' for v in d)})"
            g["few_lift_over_ce"] = {"mean": mean, "std": sd, "per_seed": d}
        print(f"| {m} | " + " | ".join(cell(g, k) for k in (*KEYS, "val_acc_all", "val_acc_few")) + f" | {lift} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"config": a.config, "set": a.set, "seeds": a.seeds, "methods": agg}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
