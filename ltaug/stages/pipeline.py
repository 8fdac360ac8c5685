"""Stage: everything end to end (DiffuLT's five stages on top of the platform's stages), one child run each.

baseline classifier (+ feature bank) -> classical long-tail baselines -> diffusion training ->
generation with ID/AID/OOD filtering into shards -> downstream classifier on real + synthetic (omega)
-> evaluation (accuracy groups, generative metrics, plots, a Markdown report).

Every stage writes into its own folder of the pipeline's run directory, so re-running the same config
resumes: finished training stages resume from their final checkpoint at once and generation skips
published shards. A stage is skipped when the config points at an existing output
(``classifier.checkpoint``, ``model.checkpoint``, ``pipeline.shards``). Every stage gets the same
launcher and reads the same cached dataset artifact.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable

import torch

from .. import storage
from ..classify import load_synthetic, select_synthetic
from ..config import Config, with_values
from ..data.dataset import val_note, val_report
from .data import stage_data
from .checks import check_classifier_fits, check_diffusion_fits
from .evaluate import evaluate
from .generate import generate
from .launcher import Launcher
from .report import write_report
from .run import Run
from .train_classifier import ACC_KEYS, VAL_ACC_KEYS, train_classifier
from .train_diffusion import train_diffusion


def _accuracy(report: dict[str, Any]) -> dict[str, Any]:
    """Test figures (``acc_*``, ``per_class``) beside the validation figures (``val_acc_*``) of one classifier."""
    return {**{k: report[k] for k in ACC_KEYS}, **{k: report.get(k) for k in VAL_ACC_KEYS}, "per_class": report["per_class"]}


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
    ecfg = with_values(cfg, {"classifier.synthetic_uri": ""})
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


def pipeline(cfg: Config, run: Run, launcher: Launcher) -> dict[str, Any]:
    """All stages in order; returns the pipeline summary (see ``jobs/pipeline.py``)."""
    t_start = time.perf_counter()
    data, data_uri = stage_data(cfg)
    counts = data.counts.counts
    print(f"[data] {cfg.data.source}: {data.num_classes} classes, train {list(counts)} "
          f"(r={data.counts.imbalance_ratio:.1f}), test {len(data.test)} balanced; groups "
          + ", ".join(f"{g} {len(v)}" for g, v in data.groups.items()) + f"; artifact {data_uri}", flush=True)
    print(f"[data] {val_note(data)}", flush=True)
    if cfg.classifier.checkpoint:       # given outputs must fit the data before any stage runs
        check_classifier_fits("classifier.checkpoint", cfg.classifier.checkpoint, data)
    if cfg.model.checkpoint:
        check_diffusion_fits("model.checkpoint", cfg.model.checkpoint, data, cfg.sample.use_ema)

    # 1. baseline classifier + feature bank (skipped when classifier.checkpoint points at one)
    if cfg.classifier.checkpoint:
        baseline = existing_classifier(cfg, run, "baseline")
    else:
        baseline = classifier_stage(cfg, run, launcher, "baseline", cfg.pipeline.baseline_method)
    base_ckpt = baseline["checkpoint"]

    # 2. classical long-tail baselines on the real data only
    classical = {m: classifier_stage(cfg, run, launcher, f"classical-{m}", m) for m in cfg.pipeline.classical}

    # 3. diffusion (AID and the classifier-feature discrepancy use the baseline's features)
    dcfg = with_values(cfg, {"classifier.checkpoint": base_ckpt,
                             **({"train.steps": cfg.pipeline.diffusion_steps} if cfg.pipeline.diffusion_steps else {})})
    if cfg.model.checkpoint:
        diffusion = {"checkpoint": cfg.model.checkpoint, "mlflow_run_id": None, "seconds": 0.0}
        print(f"[diffusion] using existing {cfg.model.checkpoint}", flush=True)
    else:
        diffusion = _staged(run, "diffusion", dcfg, lambda r: train_diffusion(dcfg, r, launcher))
        print(f"[diffusion] checkpoint {diffusion['checkpoint']}  ({diffusion['seconds']:.0f}s)", flush=True)

    # 4. generation + ID/AID/OOD filtering into shards
    if cfg.pipeline.shards:
        shards = cfg.pipeline.shards
        gen = {"output_uri": shards, "mlflow_run_id": None, "seconds": 0.0}
        print(f"[generate] using existing shards {shards}", flush=True)
    else:
        gcfg = with_values(dcfg, {"model.checkpoint": diffusion["checkpoint"]})
        log = lambda m: print(f"[generate] {m}", flush=True)  # noqa: E731
        gen = _staged(run, "generate", gcfg, lambda r: generate(gcfg, r, launcher, log=log))
        shards = gen["output_uri"]
    gen["manifest"] = _read_manifest(shards)

    # 5. downstream classifier on real + synthetic (weight omega)
    synthetic = load_synthetic(shards, data.train.image_size, data.train.channels, data.num_classes,
                               cfg.data.on_bad_record)
    synthetic = select_synthetic(synthetic, data.train.counts, cfg.classifier.synthetic_max_per_class,
                                 cfg.classifier.synthetic_fill_to, torch.Generator().manual_seed(cfg.seed))
    augmented = classifier_stage(cfg, run, launcher, "augmented", cfg.pipeline.augmented_method, synthetic=synthetic)

    # 6. evaluation: generative metrics, plots, report
    reports = {"baseline": baseline, **{m: r for m, r in classical.items()}, "augmented": augmented}
    evaluation = write_report(cfg, run, data, baseline, classical, augmented, synthetic, gen)
    summary = {
        "baseline": _accuracy(baseline),
        "augmented": _accuracy(augmented),
        "classical": {m: _accuracy(r) for m, r in classical.items()},
        "generation": generation_counts(gen["manifest"]) if gen.get("manifest") else
        {"requested": None, "written": len(synthetic), "id": None, "aid": None, "ood": None},
        "mlflow_run_ids": {"pipeline": run.tracker.run_id, "baseline": baseline["mlflow_run_id"],
                           **{f"classical-{m}": r["mlflow_run_id"] for m, r in classical.items()},
                           "diffusion": diffusion["mlflow_run_id"], "generate": gen.get("mlflow_run_id"),
                           "augmented": augmented["mlflow_run_id"]},
        "checkpoints": {"baseline": base_ckpt, "diffusion": diffusion["checkpoint"],
                        "augmented": augmented["checkpoint"],
                        **{f"classical-{m}": r["checkpoint"] for m, r in classical.items()}},
        "shards": shards,
        "dataset": data_uri,
        **val_report(data),
        "num_synthetic_used": len(synthetic),
        "generative": evaluation.get("generative"),
        "report": evaluation["report"],
        "world_size": {k: v.get("world_size") for k, v in reports.items()},
        "seconds": {"total": round(time.perf_counter() - t_start, 1),
                    **{k: v.get("seconds") for k, v in (("baseline", baseline), ("diffusion", diffusion),
                                                        ("generate", gen), ("augmented", augmented))},
                    **{f"classical-{m}": r["seconds"] for m, r in classical.items()}},
    }
    logged = (*ACC_KEYS, *VAL_ACC_KEYS)
    run.tracker.log_metrics({**{f"baseline_{k}": v for k, v in summary["baseline"].items() if k in logged and v is not None},
                             **{f"augmented_{k}": v for k, v in summary["augmented"].items() if k in logged and v is not None}})
    print_table(summary)
    return summary


def print_table(summary: dict[str, Any]) -> None:
    rows = [("baseline", summary["baseline"])] + [(m, r) for m, r in summary["classical"].items()] + \
        [("augmented", summary["augmented"])]
    print("\n top-1 on the balanced test set (%), and on the validation split (val)")
    print(f" {'method':<18} {'all':>6} {'many':>6} {'medium':>7} {'few':>6} {'val all':>8} {'val few':>8}")
    for name, r in rows:
        f = lambda v: "     -" if v is None else f"{100 * v:6.1f}"  # noqa: E731
        print(f" {name:<18} {f(r['acc_all'])} {f(r['acc_many'])} {f(r['acc_medium']):>7} {f(r['acc_few'])} "
              f"{f(r.get('val_acc_all')):>8} {f(r.get('val_acc_few')):>8}")
    g = summary["generation"]
    print(f" generation: requested {g['requested']}, written {g['written']} (ID {g['id']}, AID {g['aid']}, "
          f"OOD {g['ood']}); synthetic used {summary['num_synthetic_used']}\n", flush=True)


__all__ = ["pipeline", "classifier_stage", "generation_counts", "print_table"]
