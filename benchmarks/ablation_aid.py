"""DiffuLT's ablation (Table 9: generation / L_AID / filter / omega weighting) on MNIST-LT, through the jobs.

Rows (cumulative, as in the paper); every classifier is plain CE (the paper's ablation), one diffusion model
per row and ``--seeds`` classifier seeds on it (like ``pipeline.seeds``), so rows differ only in what they add:

  (a) real only (CE)            the pipeline's baseline classifiers (one per seed)
  (b) + generation              the pipeline's CBDM diffusion model (no AID), no filter (keep id, aid, ood), omega 1
  (c) + AID loss                a diffusion model trained like (b)'s plus loss.aid = ALPHA (features:
                                --aid-features; DiffuLT: the filter's classifier = the baseline of seed 0), no filter
  (d) + filter                  (c)'s model, generation keeps id + aid (refilled to the target), omega 1
  (e) + omega weighting         (d)'s shards, omega = 0.3 (classifier.synthetic_weight)

Generation uses the pipeline's gate-chosen ``guidance.minority.scale`` (its ``minority_gate``) for every row.
The base is a ``jobs/pipeline.py`` run of ``configs/mnist-lt.yaml`` with ``pipeline.seeds`` (``--pipeline-run``:
an existing one's directory; otherwise it is run). Selection is on the validation split: the table marks the
row with the best mean val top-1 and says whether AID helps on validation ((c) vs (b), paired by seed).
Output: ``<out>/ablation_aid.md`` and ``<out>/ablation_aid.json`` (per seed and row: val/test accuracies,
generation counts, the AID calibration of (c)'s diffusion). Every job has a fixed ``run.name``: re-running
resumes.

    python benchmarks/ablation_aid.py --seeds 0 1 2 --scale full --pipeline-run runs/<mnist-lt pipeline run>
    python benchmarks/ablation_aid.py --seeds 0 --scale tiny          # smoke (minutes)

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
KEYS = ("acc_all", "acc_many", "acc_medium", "acc_few", "val_acc_all", "val_acc_few")
# --scale: overrides on top of configs/mnist-lt.yaml (full = the config as it is)
SCALES: dict[str, list[str]] = {
    "full": [],
    "small": ["train.steps=300", "train.warmup=30", "train.ckpt_every=0", "sample.steps=10",
              "classifier.epochs=2", "generate.target_per_class=200", "eval.kid_subsets=10", "eval.cas_steps=50"],
    "tiny": ["train.steps=20", "train.warmup=0", "train.ckpt_every=0", "sample.steps=2",
             "classifier.epochs=0", "classifier.steps=10", "generate.target_per_class=60", "eval.kid_subsets=2",
             "data.image_size=8", "model.attn_resolutions=[]", "eval.num_per_class=4", "eval.evalnet_steps=10",
             "eval.cas_steps=0", "pipeline.gate_scales=[0.1]", "pipeline.classical=[]"],
}


class Jobs:
    """The ltaug jobs in subprocesses on configs/mnist-lt.yaml + the scale's and the common overrides."""

    def __init__(self, out: Path, common: list[str], log) -> None:
        self.out, self.common, self.log = out, common, log

    def __call__(self, job: str, name: str, sets: list[str]) -> dict[str, Any]:
        args = [sys.executable, str(ROOT / "jobs" / f"{job}.py"), "--config", str(ROOT / "configs" / "mnist-lt.yaml"),
                *[a for s in (*self.common, *sets, f"run.name={name}") for a in ("--set", s)]]
        t0 = time.perf_counter()
        log_path = self.out / f"{name}.log"
        with open(log_path, "w") as fh:
            rc = subprocess.run(args, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT).returncode
        text = log_path.read_text()
        if rc != 0:
            raise SystemExit(f"{job} {name} failed (rc {rc}); see {log_path}:\n{text[-3000:]}")
        run_dir = Path(text.strip().splitlines()[-1])
        summary = json.loads((run_dir / "summary.json").read_text())
        summary["_run_dir"], summary["_seconds"] = str(run_dir), round(time.perf_counter() - t0, 1)
        self.log(f"{job} {name}: {summary['_seconds']:.0f}s")
        return summary


def _acc(rep: dict[str, Any]) -> dict[str, Any]:
    return {k: rep.get(k) for k in KEYS}


def _gen_counts(summary: dict[str, Any]) -> dict[str, Any]:
    m = json.loads((Path(summary["_run_dir"]) / "manifest.json").read_text())
    cats = m.get("categories", {})
    return {"requested": m["requested"], "written": m["written"], "id": cats.get("id", 0), "aid": cats.get("aid", 0),
            "ood": cats.get("ood", 0), "shortfall": m.get("shortfall"), "rounds": len(m.get("rounds", []))}


def ablation(seeds: list[int], base: dict[str, Any], jobs: Jobs, aid_features: str, tag: str) -> dict[str, Any]:
    """Rows (b)-(e) on top of the pipeline summary ``base`` (its baseline rows are row (a))."""
    clf0 = base["checkpoints"]["baseline"]
    scale = (base.get("minority_gate") or {}).get("chosen_scale")
    fixed = [f"classifier.checkpoint={clf0}"] + ([] if scale is None else [f"guidance.minority.scale={scale}"])
    aid = [f"loss.aid={ALPHA}", f"loss.aid_features={aid_features}"]
    cdiff = jobs("train_diffusion", f"{tag}-aid-diffusion", [*aid, f"classifier.checkpoint={clf0}"])
    models = {"b": base["checkpoints"]["diffusion"], "c": cdiff["checkpoint"]}
    nofilter, keep = "filter.keep=[id,aid,ood]", "filter.keep=[id,aid]"
    gens = {"b": jobs("generate", f"{tag}-b-generate", [*fixed, f"model.checkpoint={models['b']}", nofilter]),
            "c": jobs("generate", f"{tag}-c-generate", [*fixed, *aid, f"model.checkpoint={models['c']}", nofilter]),
            "d": jobs("generate", f"{tag}-d-generate", [*fixed, *aid, f"model.checkpoint={models['c']}", keep])}
    shards = {"b": gens["b"], "c": gens["c"], "d": gens["d"], "e": gens["d"]}
    omega = {"b": 1.0, "c": 1.0, "d": 1.0, "e": 0.3}
    rows: dict[str, dict[int, dict[str, Any]]] = {"a": {r["seed"]: _acc(r) for r in base["baseline"]["seeds"]}}
    used: dict[str, dict[int, Any]] = {}
    for r in ("b", "c", "d", "e"):
        rows[r], used[r] = {}, {}
        for s in seeds:
            res = jobs("train_classifier", f"{tag}-{r}-clf-s{s}",
                       [f"seed={s}", "classifier.method=ce", "classifier.checkpoint=",
                        f"classifier.synthetic_uri={shards[r]['output_uri']}", f"classifier.synthetic_weight={omega[r]}"])
            rows[r][s], used[r][s] = _acc(res), res.get("num_synthetic")
            jobs.log(f"row {r} seed {s}: val all {res.get('val_acc_all')}  few {res.get('val_acc_few')}  "
                     f"test all {res['acc_all']}  few {res['acc_few']}")
    missing = [s for s in seeds if s not in rows["a"]]
    if missing:
        raise SystemExit(f"--pipeline-run has no baseline for seeds {missing} (its pipeline.seeds are "
                         f"{sorted(rows['a'])})")
    return {"rows": rows, "generation": {k: _gen_counts(g) for k, g in gens.items()}, "num_synthetic_used": used,
            "minority_scale": scale, "aid_calibration": cdiff.get("aid_calibration"),
            "aid_features": cdiff.get("aid_features"), "diffusion": models,
            "seconds": {"c_diffusion": cdiff["_seconds"], **{f"{k}_generate": g["_seconds"] for k, g in gens.items()}}}


def _ms(vals: list[float | None]) -> tuple[float | None, float | None]:
    v = [x for x in vals if x is not None]
    if not v:
        return None, None
    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def aggregate(res: dict[str, Any], seeds: list[int]) -> dict[str, dict[str, list]]:
    return {r: {k: list(_ms([res["rows"][r][s][k] for s in seeds])) for k in KEYS} for r in ROWS}


def _paired(res: dict[str, Any], seeds: list[int], hi: str, lo: str, key: str) -> list[float]:
    return [res["rows"][hi][s][key] - res["rows"][lo][s][key] for s in seeds
            if res["rows"][hi][s][key] is not None and res["rows"][lo][s][key] is not None]


def markdown(agg: dict, res: dict, seeds: list[int], scale: str, aid_features: str) -> str:
    f = lambda m, s: "-" if m is None else f"{100 * m:.1f} ± {100 * s:.1f}"  # noqa: E731
    best = max(ROWS, key=lambda r: agg[r]["val_acc_all"][0] if agg[r]["val_acc_all"][0] is not None else -1)
    lines = [f"## DiffuLT ablation on MNIST-LT (r=100), scale `{scale}` ({' '.join(SCALES[scale]) or 'configs/mnist-lt.yaml as is'}), "
             f"classifier seeds {seeds} on one diffusion model per row, AID alpha {ALPHA}, AID features "
             f"`{aid_features}`, all classifiers CE, minority scale {res.get('minority_scale')} (the pipeline's gate)", "",
             "top-1 %, mean ± sample std over seeds; selection on the validation split (val); ◀ = best mean val all", "",
             "| row | val all | val few | test all | test many | test medium | test few |", "|---|---|---|---|---|---|---|"]
    for r in ROWS:
        a = agg[r]
        lines.append(f"| {LABELS[r]}{' ◀' if r == best else ''} | {f(*a['val_acc_all'])} | {f(*a['val_acc_few'])} | "
                     f"{f(*a['acc_all'])} | {f(*a['acc_many'])} | {f(*a['acc_medium'])} | {f(*a['acc_few'])} |")
    lines.append("")
    for hi, lo, what in (("c", "b", "AID loss"), ("d", "c", "filter"), ("e", "d", "omega weighting"),
                         ("b", "a", "generation")):
        for key in ("val_acc_all", "val_acc_few"):
            d = _paired(res, seeds, hi, lo, key)
            if d:
                m, sd = _ms(d)
                verdict = ("one seed: no verdict" if len(d) < 2 else
                           "helps" if m - sd > 0 else ("hurts" if m + sd < 0 else "no clear effect"))
                lines.append(f"- {what} on validation ({hi}) − ({lo}), {key}: {100 * m:+.1f} ± {100 * sd:.1f} points "
                             f"(per seed {', '.join(f'{100 * v:+.1f}' for v in d)}) → {verdict}")
    lines += ["", "AID calibration (diffusion of row (c), fixed batch of 64): AID / eps-MSE"]
    cal = res.get("aid_calibration") or {}
    for when in ("init", "final"):
        c = cal.get(when)
        if c:
            lines.append(f"- {when}: mse {c['mse']:.4f}, aid {c['aid']:.4f} (ID side {c['aid_id_side']:.4f}, OOD side "
                         f"{c['aid_ood_side']:.4f}), ratio of means {c['ratio_mean']:.3g}, ratio of grad norms "
                         f"{c['ratio_grad']:.3g}, alpha x grad ratio {c['alpha_ratio_grad']:.3g}, x0_hat ID/AID/OOD "
                         f"{c['x0_hat_id']:.2f}/{c['x0_hat_aid']:.2f}/{c['x0_hat_ood']:.2f}")
    g = res["generation"]
    lines.append("- generation requested / written (ID/AID/OOD): " + "; ".join(
        f"({k}) {v['requested']} / {v['written']} ({v['id']}/{v['aid']}/{v['ood']}, {v['rounds']} round(s), "
        f"shortfall {v['shortfall']})" for k, v in g.items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--scale", choices=tuple(SCALES), default="full")
    p.add_argument("--data-root", default=os.environ.get("LTAUG_MNIST", "/work/shared/data/mnist"))
    p.add_argument("--aid-features", choices=("filter", "own"), default="filter",
                   help="the AID loss's feature network (DiffuLT: the filter's classifier)")
    p.add_argument("--pipeline-run", default="", help="an existing mnist-lt pipeline run directory with "
                                                      "pipeline.seeds covering --seeds (else it is run)")
    p.add_argument("--tag", default="ablation", help="prefix of every job's run.name")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "_work" / "ablation_aid"))
    a = p.parse_args(argv)
    out = Path(a.out) / a.scale
    out.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(f"[ablation] {m}", flush=True)  # noqa: E731
    common = [f"data.root={a.data_root}", *SCALES[a.scale]]
    if a.scale != "full":
        common += [f"run.output_dir={out / 'runs'}", "tracking.uri=none"]
    jobs = Jobs(out, common, log)
    if a.pipeline_run:
        base = json.loads((Path(a.pipeline_run) / "summary.json").read_text())
    else:
        base = jobs("pipeline", f"{a.tag}-pipeline", [f"pipeline.seeds={list(a.seeds)}"])
    res = ablation(list(a.seeds), base, jobs, a.aid_features, a.tag)
    agg = aggregate(res, list(a.seeds))
    md = markdown(agg, res, list(a.seeds), a.scale, a.aid_features)
    (out / "ablation_aid.md").write_text(md)
    (out / "ablation_aid.json").write_text(json.dumps({"scale": a.scale, "overrides": SCALES[a.scale], "alpha": ALPHA,
                                                       "aid_features": a.aid_features, "seeds": a.seeds,
                                                       "aggregate": agg, **res}, indent=2, default=str))
    print(md)
    print(out / "ablation_aid.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
