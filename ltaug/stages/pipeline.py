"""Stage: everything end to end (DiffuLT's five stages on top of the platform's stages), one child run each.

baseline classifier (+ feature bank) -> classical long-tail baselines -> diffusion training ->
generation with ID/AID/OOD filtering into shards -> downstream classifier on real + synthetic (omega)
-> evaluation (accuracy groups, generative metrics, plots, a Markdown report).

Every stage writes into its own folder of the pipeline's run directory, so re-running the same config
resumes: finished training stages resume from their final checkpoint at once and generation skips
published shards. A stage is skipped when the config points at an existing output
(``classifier.checkpoint``, ``model.checkpoint``, ``pipeline.shards``). Every stage gets the same
launcher and reads the same cached dataset artifact.

Several seeds (``pipeline.seeds``): every classifier stage runs once per seed (child runs ``<stage>-s<seed>``);
each method's summary entry holds the mean over seeds in ``acc_*`` / ``val_acc_*``, the sample std (ddof 1;
None for one seed) in ``*_std`` and the per-seed rows in ``seeds``; ``paired`` is augmented minus the best
classical method chosen on mean ``val_acc_few`` (see ``seeds.py``), per seed and as mean ± std.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable


from .. import storage
from ..classify.stream import plan_synthetic, sample_set
from ..config import Config, with_values
from ..data.dataset import val_note, val_report
from .data import stage_data
from .checks import check_classifier_fits, check_diffusion_fits
from .evaluate import evaluate, minority_gate
from .generate import generate
from .launcher import Launcher
from .report import write_report
from .run import Run
from .seeds import aggregate, paired
from .train_classifier import ACC_KEYS, SAMPLE_MAX, VAL_ACC_KEYS, train_classifier
from .train_diffusion import train_diffusion


def rep_str(rep: dict[str, Any]) -> str:
    f = lambda v: "  -  " if v is None else f"{100 * v:5.1f}"  # noqa: E731
    return (f"{f(rep['acc_all'])}  many {f(rep['acc_many'])}  medium {f(rep['acc_medium'])}  few {f(rep['acc_few'])}"
            f"  (val: all {f(rep.get('val_acc_all'))}  few {f(rep.get('val_acc_few'))})")


def _staged(parent: Run, name: str, cfg: Config, body: Callable[[Run], dict[str, Any]]) -> dict[str, Any]:
    """Run ``body`` in the child run ``name``: its summary.json, its MLflow status, its seconds."""
    run = parent.child(name, cfg)
    t0 = time.perf_counter()
    status = "FAILED"
    try:
        out = body(run)
        status = "FINISHED"
    finally:
        seconds = time.perf_counter() - t0
        run.tracker.log_metrics({"stage_seconds": seconds})
        if status == "FINISHED":
            run.write_json("summary.json", out)
        run.tracker.close(status)
    return {**out, "mlflow_run_id": run.tracker.run_id, "seconds": round(seconds, 1)}


def classifier_stage(cfg: Config, parent: Run, launcher: Launcher, name: str, method: str,
                     synthetic: Any = None) -> dict[str, Any]:
    scfg = with_values(cfg, {"classifier.method": method, "classifier.checkpoint": "", "classifier.synthetic_uri": ""})

    def body(run: Run) -> dict[str, Any]:
        run.tracker.log_params({"classifier.method": method, "num_synthetic": 0 if synthetic is None else len(synthetic)})
        return train_classifier(scfg, run, launcher, synthetic=synthetic, extras=False)

    res = _staged(parent, name, scfg, body)
    print(f"[{name}] {method}: all {rep_str(res)}  ({res['seconds']:.0f}s)", flush=True)
    return res


def existing_classifier(cfg: Config, parent: Run, name: str) -> dict[str, Any]:
    """The configured ``classifier.checkpoint`` evaluated (the ``evaluate`` stage) instead of trained."""
    ecfg = with_values(cfg, {"classifier.synthetic_uri": "", "model.checkpoint": ""})
    res = _staged(parent, name, ecfg, lambda r: evaluate(ecfg, r))
    print(f"[{name}] (existing {res['checkpoint']}): all {rep_str(res)}", flush=True)
    return res


def generation_counts(manifest: dict[str, Any]) -> dict[str, int]:
    cats = manifest.get("categories", {})
    return {"requested": int(manifest["requested"]), "written": int(manifest["written"]),
            "id": int(cats.get("id", 0)), "aid": int(cats.get("aid", 0)), "ood": int(cats.get("ood", 0))}


def _read_manifest(shards: str) -> dict[str, Any] | None:
    from ..generate.manifest import existing_manifest_uri

    uri = existing_manifest_uri(shards)
    return json.loads(storage.read_bytes(uri)) if uri else None


def _synthetic(cfg: Config, data: Any, shards: str) -> Any:
    """The synthetic set the augmented classifier trains on, as a streaming spec (per-shard keep counts, no
    images): the workers stream the shards; the report gets a bounded sample (``sample_set``)."""
    return plan_synthetic(shards, data.train.counts, image_size=data.train.image_size, channels=data.train.channels,
                          num_classes=data.num_classes, max_per_class=cfg.classifier.synthetic_max_per_class,
                          fill_to=cfg.classifier.synthetic_fill_to, on_bad=cfg.data.on_bad_record)


def check_seeds(cfg: Config) -> None:
    """``pipeline.seed_diffusion`` trains and generates per seed: it cannot reuse one given output."""
    p = cfg.pipeline
    if not (p.seed_diffusion and p.seeds):
        return
    for key, value in (("model.checkpoint", cfg.model.checkpoint), ("pipeline.shards", p.shards),
                       ("generate.output_uri", cfg.generate.output_uri)):
        if value:
            raise ValueError(f"pipeline.seed_diffusion=true trains a diffusion model and writes shards per seed; "
                             f"{key}={value!r} names one for all seeds (unset it, or pipeline.seed_diffusion=false)")


def gate_stage(dcfg: Config, run: Run, data: Any, checkpoint: str, name: str) -> dict[str, Any]:
    """The quality gate of minority guidance (``pipeline.gate_scales``) on the trained model, child run ``name``:
    its ``chosen_scale`` is the ``guidance.minority.scale`` generation uses."""
    n = dcfg.pipeline.gate_per_class or dcfg.eval.num_per_class
    gcfg = with_values(dcfg, {"eval.minority_scales": list(dcfg.pipeline.gate_scales), "eval.num_per_class": n})
    res = _staged(run, name, gcfg, lambda r: minority_gate(gcfg, r, data, checkpoint))
    print(f"[{name}] guidance.minority.scale {dcfg.guidance.minority.scale:g} -> {res['chosen_scale']:g} "
          f"(largest of {sorted(dcfg.pipeline.gate_scales)} within the gate on validation; {res['plot']})", flush=True)
    return res


def diffusion_and_shards(cfg: Config, run: Run, launcher: Launcher, base_ckpt: str,
                         seed: int | None = None, data: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stages 3-4: (diffusion, generation) results. ``seed`` None: child runs ``diffusion`` / ``generate`` at the
    config's seeds; else ``diffusion-s<seed>`` / ``generate-s<seed>`` with ``seed`` and ``generate.seed`` = seed.
    With ``pipeline.gate_scales`` (and ``data``) the gate runs in between (child run ``gate<sfx>``); its result is
    ``gen["gate"]``."""
    sfx = "" if seed is None else f"-s{seed}"
    # AID and the classifier-feature discrepancy use the baseline's features
    dcfg = with_values(cfg, {"classifier.checkpoint": base_ckpt,
                             **({} if seed is None else {"seed": seed, "generate.seed": seed}),
                             **({"train.steps": cfg.pipeline.diffusion_steps} if cfg.pipeline.diffusion_steps else {})})
    if cfg.model.checkpoint:
        diffusion = {"checkpoint": cfg.model.checkpoint, "mlflow_run_id": None, "seconds": 0.0}
        print(f"[diffusion] using existing {cfg.model.checkpoint}", flush=True)
    else:
        diffusion = _staged(run, f"diffusion{sfx}", dcfg, lambda r: train_diffusion(dcfg, r, launcher))
        print(f"[diffusion{sfx}] checkpoint {diffusion['checkpoint']}  ({diffusion['seconds']:.0f}s)", flush=True)
    if cfg.pipeline.shards:
        gen = {"output_uri": cfg.pipeline.shards, "mlflow_run_id": None, "seconds": 0.0}
        print(f"[generate] using existing shards {cfg.pipeline.shards}", flush=True)
    else:
        gate = None
        if cfg.pipeline.gate_scales:
            if data is None:
                raise ValueError("pipeline.gate_scales: the quality gate needs the dataset (its validation split)")
            gate = gate_stage(dcfg, run, data, diffusion["checkpoint"], f"gate{sfx}")
            dcfg = with_values(dcfg, {"guidance.minority.scale": float(gate["chosen_scale"])})
        gcfg = with_values(dcfg, {"model.checkpoint": diffusion["checkpoint"]})
        log = lambda m: print(f"[generate{sfx}] {m}", flush=True)  # noqa: E731
        gen = _staged(run, f"generate{sfx}", gcfg, lambda r: generate(gcfg, r, launcher, log=log))
        if gate is not None:
            gen["gate"] = {k: gate.get(k) for k in ("chosen_scale", "rule", "rows", "plot", "mlflow_run_id", "seconds")}
    gen["manifest"] = _read_manifest(gen["output_uri"])
    return diffusion, gen


def pipeline(cfg: Config, run: Run, launcher: Launcher) -> dict[str, Any]:
    """All stages in order; returns the pipeline summary (see ``jobs/pipeline.py``).

    ``pipeline.seeds`` (empty = one run at ``seed``, child runs named by stage): every classifier stage runs once
    per seed s with ``seed=s`` (initialisation, batch order), child runs ``<stage>-s<s>``. The
    first seed's baseline is the one whose features drive the diffusion's AID loss, the ID/AID/OOD filter and
    the report's metrics. One diffusion model and one shard set serve every seed unless
    ``pipeline.seed_diffusion`` (then the first seed's shards go into the report). An existing
    ``classifier.checkpoint`` is evaluated once (a single baseline row, seed null). ``mlflow_run_ids``,
    ``checkpoints`` and ``seconds`` are keyed by child run name; ``checkpoints.baseline`` / ``augmented`` /
    ``classical-<m>`` / ``diffusion`` name the first seed's."""
    t_start = time.perf_counter()
    data, data_uri = stage_data(cfg)
    counts = data.counts.counts
    print(f"[data] {cfg.data.source}: {data.num_classes} classes, train {list(counts)} "
          f"(r={data.counts.imbalance_ratio:.1f}), test {len(data.test)} balanced; groups "
          + ", ".join(f"{g} {len(v)}" for g, v in data.groups.items()) + f"; artifact {data_uri}", flush=True)
    print(f"[data] {val_note(data)}", flush=True)
    check_seeds(cfg)
    if cfg.classifier.checkpoint:       # given outputs must fit the data before any stage runs
        check_classifier_fits("classifier.checkpoint", cfg.classifier.checkpoint, data)
    if cfg.model.checkpoint:
        check_diffusion_fits("model.checkpoint", cfg.model.checkpoint, data, cfg.sample.use_ema)
    multi = bool(cfg.pipeline.seeds)
    seeds = list(cfg.pipeline.seeds) or [cfg.seed]
    scfg = {s: with_values(cfg, {"seed": s}) if multi else cfg for s in seeds}
    tag = (lambda name, s: f"{name}-s{s}") if multi else (lambda name, s: name)  # noqa: E731
    stages: dict[str, dict[str, Any]] = {}     # child run name -> its result

    def per_seed(name: str, method: str, synthetic: Callable[[int], Any] | None = None) -> list[dict[str, Any]]:
        rows = []
        for s in seeds:
            res = classifier_stage(scfg[s], run, launcher, tag(name, s), method,
                                   synthetic=None if synthetic is None else synthetic(s))
            stages[tag(name, s)] = res
            rows.append({**res, "seed": s})
        return rows

    # 1. baseline classifier + feature bank (skipped when classifier.checkpoint points at one)
    if cfg.classifier.checkpoint:
        stages["baseline"] = existing_classifier(cfg, run, "baseline")
        baseline_rows = [{**stages["baseline"], "seed": None}]
    else:
        baseline_rows = per_seed("baseline", cfg.pipeline.baseline_method)
    base_ckpt = baseline_rows[0]["checkpoint"]

    # 2. classical long-tail baselines on the real data only
    classical_rows = {m: per_seed(f"classical-{m}", m) for m in cfg.pipeline.classical}

    # 3-4. diffusion, generation + ID/AID/OOD filtering into shards (once, or per seed)
    per_diffusion = multi and cfg.pipeline.seed_diffusion      # without pipeline.seeds: the config's seed
    dseeds: list[int | None] = list(seeds) if per_diffusion else [None]
    made = {d: diffusion_and_shards(cfg, run, launcher, base_ckpt, d, data=data) for d in dseeds}
    for d, (diffusion, gen) in made.items():
        sfx = "" if d is None else f"-s{d}"
        stages[f"diffusion{sfx}"], stages[f"generate{sfx}"] = diffusion, gen
    diffusion, gen = made[dseeds[0]]
    shards = gen["output_uri"]

    # 5. downstream classifier on real + synthetic (weight omega)
    synthetics = {d: _synthetic(cfg if d is None else scfg[d], data, made[d][1]["output_uri"]) for d in dseeds}
    synthetic = synthetics[dseeds[0]]
    augmented_rows = per_seed("augmented", cfg.pipeline.augmented_method,
                              synthetic=lambda s: synthetics[s if per_diffusion else None])

    # 6. aggregation over seeds, paired difference, evaluation: generative metrics, plots, report
    baseline = aggregate(baseline_rows, "baseline")
    classical = {m: aggregate(r, m) for m, r in classical_rows.items()}
    augmented = aggregate(augmented_rows, "augmented")
    pair = paired(augmented, classical)
    evaluation = write_report(cfg, run, data, {**baseline, "checkpoint": base_ckpt}, classical, augmented,
                              sample_set(synthetic, SAMPLE_MAX), gen, paired=pair,
                              diffusion_checkpoint=diffusion["checkpoint"])
    firsts = {"baseline": baseline_rows[0], "augmented": augmented_rows[0],
              **{f"classical-{m}": r[0] for m, r in classical_rows.items()}}
    summary = {
        "baseline": baseline,
        "augmented": augmented,
        "classical": classical,
        "paired": pair,
        "seeds": seeds,
        "seed_diffusion": per_diffusion,
        "generation": generation_counts(gen["manifest"]) if gen.get("manifest") else
        {"requested": None, "written": len(synthetic), "id": None, "aid": None, "ood": None},
        "mlflow_run_ids": {"pipeline": run.tracker.run_id, **{k: v.get("mlflow_run_id") for k, v in stages.items()}},
        "checkpoints": {"baseline": base_ckpt, "diffusion": diffusion["checkpoint"],
                        **{k: v["checkpoint"] for k, v in firsts.items()},
                        **{k: v["checkpoint"] for k, v in stages.items() if "checkpoint" in v}},
        "shards": shards,
        "dataset": data_uri,
        **val_report(data),
        "num_synthetic_used": len(synthetic),
        "minority_gate": gen.get("gate"),
        "generative": evaluation.get("generative"),
        "report": evaluation["report"],
        "world_size": {k: v.get("world_size") for k, v in firsts.items()},
        "seconds": {"total": round(time.perf_counter() - t_start, 1), **{k: v.get("seconds") for k, v in stages.items()}},
    }
    if per_diffusion:
        summary["shards_per_seed"] = {str(d): made[d][1]["output_uri"] for d in dseeds}
        summary["generation_per_seed"] = {str(d): generation_counts(made[d][1]["manifest"]) if made[d][1].get("manifest")
                                          else None for d in dseeds}
    logged = (*ACC_KEYS, *VAL_ACC_KEYS, *(f"{k}_std" for k in (*ACC_KEYS, *VAL_ACC_KEYS)))
    run.tracker.log_metrics({**{f"{m}_{k}": v for m in ("baseline", "augmented") for k, v in summary[m].items()
                                if k in logged and v is not None},
                             **{f"paired_{k}": v for k, v in pair.items() if k in logged and v is not None}})
    print_table(summary)
    return summary


def _cell(r: dict[str, Any], k: str, width: int, sign: str = "") -> str:
    v, sd = r.get(k), r.get(f"{k}_std")
    text = "-" if v is None else f"{100 * v:{sign}.1f}" + ("" if sd is None else f"±{100 * sd:.1f}")
    return f"{text:>{width}}"


def print_table(summary: dict[str, Any]) -> None:
    rows = [("baseline", summary["baseline"])] + [(m, r) for m, r in summary["classical"].items()] + \
        [("augmented", summary["augmented"])]
    n = len(summary["augmented"].get("seeds") or [None])
    w = 11 if n > 1 else 7
    print("\n top-1 on the balanced test set (%), and on the validation split (val)"
          + (f"; mean ± sample std over {n} seeds {summary.get('seeds')}" if n > 1 else ""))
    print(f" {'method':<18} " + " ".join(f"{h:>{w}}" for h in ("all", "many", "medium", "few", "val all", "val few")))
    for name, r in rows:
        print(f" {name:<18} " + " ".join(_cell(r, k, w) for k in (*ACC_KEYS, "val_acc_all", "val_acc_few")))
    p = summary.get("paired") or {}
    if p.get("against"):
        print(f" paired: augmented - {p['against']} (best classical by {p['reason']}), per seed:")
        for r in p["rows"]:
            print(f"   seed {r['seed']:<6} " + " ".join(f"{100 * r[k]:+{w}.1f}" if r.get(k) is not None else f"{'-':>{w}}"
                                                for k in ACC_KEYS))
        print(f"   {'mean':<11} " + " ".join(_cell(p, k, w, "+") for k in ACC_KEYS))
    elif p:
        print(f" paired: none ({p.get('reason')})")
    g = summary["generation"]
    print(f" generation: requested {g['requested']}, written {g['written']} (ID {g['id']}, AID {g['aid']}, "
          f"OOD {g['ood']}); synthetic used {summary['num_synthetic_used']}\n", flush=True)


__all__ = ["pipeline", "classifier_stage", "generation_counts", "print_table", "diffusion_and_shards", "check_seeds"]
