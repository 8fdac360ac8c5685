"""DiffuLT's ablation (Table 9: generation / L_AID / filter / omega weighting) on MNIST-LT, through the pipeline job.

Rows (cumulative, as in the paper), each a ``jobs/pipeline.py`` run on ``configs/mnist-lt.yaml`` with overrides;
every classifier is plain CE (``pipeline.augmented_method=ce``, the paper's ablation) so rows differ only in
what the row adds:

  (a) real only (CE)            the baseline classifier of pipeline (b)
  (b) + generation              CBDM diffusion without AID, no filter (keep id, aid, ood), omega = 1
  (c) + AID loss                loss.aid = ALPHA (feature network: --aid-features), no filter, omega = 1
  (d) + filter                  (c)'s diffusion model, generation keeps id + aid, omega = 1
  (e) + omega weighting         (d)'s shards, omega = 0.3 (classifier.synthetic_weight)

Stages are shared where the row does not change them: (c)-(e) reuse (b)'s baseline (classifier.checkpoint),
(d)-(e) (c)'s diffusion (model.checkpoint), (e) (d)'s shards (pipeline.shards). Selection is on the
validation split (``val_acc_*`` of the summaries): the table marks the row with the best mean val top-1 and
states whether AID helps on validation ((c) vs (b)). Output: ``<out>/ablation_aid.md`` (mean +- std over
seeds, val and test columns, the scale in the header) and ``<out>/ablation_aid.json`` (per seed and row:
val/test accuracies, generation counts, the AID calibration of the diffusion stage).

    python benchmarks/ablation_aid.py --seeds 0 1 2 --scale full          # the lead's 3-seed run (~45 min/pipeline)
    python benchmarks/ablation_aid.py --seeds 0 --scale small             # CPU smoke (~15-20 min on 2 cores)

Not in benchmarks/run.py MODULES: it trains models, it does not time them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ALPHA = 0.1   # DiffuLT Table 10
ROWS = ("a", "b", "c", "d", "e")
LABELS = {"a": "(a) real only (CE)", "b": "(b) + generation", "c": "(c) + AID loss", "d": "(d) + filter",
          "e": "(e) + omega weighting"}
KEYS = ("acc_all", "acc_few", "val_acc_all", "val_acc_few")
# --scale: overrides on top of configs/mnist-lt.yaml (full = the config as it is)
SCALES: dict[str, list[str]] = {
    "full": [],
    "small": ["pipeline.diffusion_steps=300", "train.warmup=30", "train.ckpt_every=0", "sample.steps=10",
              "classifier.epochs=2", "generate.target_per_class=200", "eval.kid_subsets=10"],
    "tiny": ["pipeline.diffusion_steps=20", "train.warmup=0", "train.ckpt_every=0", "sample.steps=2",
             "classifier.epochs=0", "classifier.steps=10", "generate.target_per_class=60", "eval.kid_subsets=2",
             "data.image_size=8", "model.attn_resolutions=[]"],
}


def run_pipeline(out: Path, name: str, sets: list[str], log) -> dict[str, Any]:
    """One pipeline job in a subprocess; its summary.json (+ the diffusion stage's, when it trained one)."""
    args = [sys.executable, str(ROOT / "jobs" / "pipeline.py"), "--config", str(ROOT / "configs" / "mnist-lt.yaml"),
            *[a for s in (*sets, f"run.output_dir={out / 'runs'}", "tracking.uri=none") for a in ("--set", s)]]
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "w") as fh:
        rc = subprocess.run(args, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    text = (out / f"{name}.log").read_text()
    if rc != 0:
        raise SystemExit(f"pipeline {name} failed (rc {rc}); see {out / f'{name}.log'}:\n{text[-3000:]}")
    run_dir = Path(text.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    dsum = run_dir / "diffusion" / "summary.json"
    summary["_diffusion"] = json.loads(dsum.read_text()) if dsum.exists() else None
    summary["_seconds"] = round(time.perf_counter() - t0, 1)
    log(f"{name}: {summary['_seconds']:.0f}s  baseline val {summary['baseline'].get('val_acc_all')}  "
        f"augmented val {summary['augmented'].get('val_acc_all')}  test {summary['augmented']['acc_all']}")
    return summary


def _acc(rep: dict[str, Any]) -> dict[str, Any]:
    return {k: rep.get(k) for k in KEYS}


def one_seed(seed: int, scale: str, root: str, out: Path, aid_features: str, log) -> dict[str, Any]:
    base = [f"seed={seed}", f"data.root={root}", "pipeline.classical=[]", "pipeline.augmented_method=ce",
            *SCALES[scale]]
    nofilter, keep = "filter.keep=[id,aid,ood]", "filter.keep=[id,aid]"
    b = run_pipeline(out, f"s{seed}-b", [*base, "loss.aid=0", nofilter, "classifier.synthetic_weight=1.0"], log)
    clf = b["checkpoints"]["baseline"]
    aid = [f"loss.aid={ALPHA}", f"loss.aid_features={aid_features}", f"classifier.checkpoint={clf}"]
    c = run_pipeline(out, f"s{seed}-c", [*base, *aid, nofilter, "classifier.synthetic_weight=1.0"], log)
    diff = c["checkpoints"]["diffusion"]
    d = run_pipeline(out, f"s{seed}-d", [*base, *aid, f"model.checkpoint={diff}", keep,
                                         "classifier.synthetic_weight=1.0"], log)
    e = run_pipeline(out, f"s{seed}-e", [*base, *aid, f"model.checkpoint={diff}", f"pipeline.shards={d['shards']}",
                                         keep, "classifier.synthetic_weight=0.3"], log)
    rows = {"a": _acc(b["baseline"]), "b": _acc(b["augmented"]), "c": _acc(c["augmented"]),
            "d": _acc(d["augmented"]), "e": _acc(e["augmented"])}
    gen = {"b": b["generation"], "c": c["generation"], "d": d["generation"], "e": e["generation"]}
    cdiff = c["_diffusion"] or {}
    return {"rows": rows, "generation": gen, "num_synthetic_used": {k: s["num_synthetic_used"] for k, s in
                                                                      (("b", b), ("c", c), ("d", d), ("e", e))},
            "aid_calibration": cdiff.get("aid_calibration"), "aid_features": cdiff.get("aid_features"),
            "seconds": {k: s["_seconds"] for k, s in (("b", b), ("c", c), ("d", d), ("e", e))}}


def _ms(vals: list[float | None]) -> tuple[float | None, float | None]:
    v = [x for x in vals if x is not None]
    if not v:
        return None, None
    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def aggregate(per_seed: dict[int, dict[str, Any]]) -> dict[str, dict[str, list]]:
    return {r: {k: list(_ms([s["rows"][r][k] for s in per_seed.values()])) for k in KEYS} for r in ROWS}


def markdown(agg: dict, per_seed: dict, scale: str, aid_features: str) -> str:
    f = lambda m, s: "-" if m is None else f"{100 * m:.1f} ± {100 * s:.1f}"  # noqa: E731
    best = max(ROWS, key=lambda r: agg[r]["val_acc_all"][0] if agg[r]["val_acc_all"][0] is not None else -1)
    seeds = sorted(per_seed)
    lines = [f"## DiffuLT ablation on MNIST-LT (r=100), scale `{scale}` ({' '.join(SCALES[scale]) or 'configs/mnist-lt.yaml as is'}), "
             f"seeds {seeds}, AID alpha {ALPHA}, AID features `{aid_features}`, all classifiers CE", "",
             "top-1 %, mean ± std over seeds; selection on the validation split (val); ◀ = best mean val all", "",
             "| row | val all | val few | test all | test few |", "|---|---|---|---|---|"]
    for r in ROWS:
        a = agg[r]
        lines.append(f"| {LABELS[r]}{' ◀' if r == best else ''} | {f(*a['val_acc_all'])} | {f(*a['val_acc_few'])} | "
                     f"{f(*a['acc_all'])} | {f(*a['acc_few'])} |")
    dv = [s["rows"]["c"]["val_acc_all"] - s["rows"]["b"]["val_acc_all"] for s in per_seed.values()
          if s["rows"]["c"]["val_acc_all"] is not None and s["rows"]["b"]["val_acc_all"] is not None]
    if dv:
        m, sd = _ms(dv)
        verdict = ("one seed: no verdict" if len(dv) < 2 else
                   "helps" if m - sd > 0 else ("hurts" if m + sd < 0 else "no clear effect"))
        lines += ["", f"AID on validation ((c) − (b), val all): {100 * m:+.1f} ± {100 * sd:.1f} points → {verdict}"]
    lines += ["", "AID calibration (diffusion of row (c), fixed batch of 64): AID / eps-MSE"]
    for seed, s in per_seed.items():
        cal = s.get("aid_calibration") or {}
        for when in ("init", "final"):
            c = cal.get(when)
            if c:
                lines.append(f"- seed {seed} {when}: mse {c['mse']:.4f}, aid {c['aid']:.4f} (ID side "
                             f"{c['aid_id_side']:.4f}, OOD side {c['aid_ood_side']:.4f}), ratio of means "
                             f"{c['ratio_mean']:.3g}, ratio of grad norms {c['ratio_grad']:.3g}, alpha x grad ratio "
                             f"{c['alpha_ratio_grad']:.3g}, x0_hat ID/AID/OOD {c['x0_hat_id']:.2f}/{c['x0_hat_aid']:.2f}/"
                             f"{c['x0_hat_ood']:.2f}")
        g = s["generation"]
        lines.append(f"- seed {seed} generation ID/AID/OOD: (b) {g['b']['id']}/{g['b']['aid']}/{g['b']['ood']}, "
                     f"(c) {g['c']['id']}/{g['c']['aid']}/{g['c']['ood']}; synthetic used {s['num_synthetic_used']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--scale", choices=tuple(SCALES), default="small")
    p.add_argument("--data-root", default=os.environ.get("LTAUG_MNIST", "/work/shared/data/mnist"))
    p.add_argument("--aid-features", choices=("filter", "own"), default="filter",
                   help="the AID loss's feature network (DiffuLT: the filter's classifier)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "_work" / "ablation_aid"))
    a = p.parse_args(argv)
    out = Path(a.out) / a.scale
    out.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(f"[ablation] {m}", flush=True)  # noqa: E731
    per_seed = {s: one_seed(s, a.scale, a.data_root, out, a.aid_features, log) for s in a.seeds}
    agg = aggregate(per_seed)
    md = markdown(agg, per_seed, a.scale, a.aid_features)
    (out / "ablation_aid.md").write_text(md)
    (out / "ablation_aid.json").write_text(json.dumps({"scale": a.scale, "overrides": SCALES[a.scale], "alpha": ALPHA,
                                                       "aid_features": a.aid_features, "aggregate": agg,
                                                       "per_seed": per_seed}, indent=2))
    print(md)
    print(out / "ablation_aid.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
