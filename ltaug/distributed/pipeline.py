"""The end-to-end pipeline (DiffuLT's five stages on top of the platform's jobs), one MLflow run per stage.

baseline classifier (+ feature bank) -> classical long-tail baselines -> diffusion training ->
generation with ID/AID/OOD filtering into shards -> downstream classifier on real + synthetic (omega)
-> evaluation (accuracy groups, generative metrics, plots, a Markdown report).

Every stage writes into its own folder of the pipeline's run directory, so re-running the same config
resumes: finished training stages resume from their final checkpoint at once and generation skips
published shards. A stage is skipped when the config points at an existing output
(``classifier.checkpoint``, ``model.checkpoint``, ``pipeline.shards``).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from .. import storage
from ..cli import Run
from ..config import Config, with_values
from ..data import LTDataset, load_dataset

ACC_KEYS = ("acc_all", "acc_many", "acc_medium", "acc_few")


@dataclass
class Stage:
    name: str
    run: Run
    seconds: float = 0.0


def open_stage(parent: Run, name: str) -> Stage:
    """A child run: ``<pipeline run>/<name>`` and an MLflow run nested under the pipeline's."""
    local = os.path.join(parent.local_dir, name)
    os.makedirs(local, exist_ok=True)
    tracker = parent.tracker.child(f"{os.path.basename(parent.dir.rstrip('/'))}/{name}")
    tracker.set_tags({"ltaug.job": f"pipeline/{name}"})
    return Stage(name, Run(cfg=parent.cfg, job=name, dir=parent.path(name), local_dir=local, tracker=tracker))


def _timed(stage: Stage, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    status = "FAILED"
    try:
        out = fn()
        status = "FINISHED"
        return out
    finally:
        stage.seconds = time.perf_counter() - t0
        stage.run.tracker.log_metrics({"stage_seconds": stage.seconds})
        stage.run.tracker.close(status)


def _device(cfg: Config) -> str:
    return "cuda" if (cfg.resources.use_gpu and torch.cuda.is_available()) else "cpu"


def _accuracy(report: dict[str, Any]) -> dict[str, Any]:
    return {**{k: report[k] for k in ACC_KEYS}, "per_class": report["per_class"]}


def classifier_stage(cfg: Config, parent: Run, data: LTDataset, name: str, method: str,
                     synthetic: Any = None) -> dict[str, Any]:
    """Train (or resume) a classifier with ``method``; evaluate on the balanced test set."""
    from ..classify import load_classifier
    from ..eval import evaluate_classifier
    from .train import classifier_train_fn, run_training

    stage = open_stage(parent, name)
    scfg = with_values(cfg, {"classifier.method": method, "classifier.checkpoint": "",
                             "classifier.synthetic_uri": ""})

    def go() -> dict[str, Any]:
        stage.run.tracker.log_params({"classifier.method": method, "num_synthetic": 0 if synthetic is None else len(synthetic)})
        fn = (lambda c, w, d: classifier_train_fn(c, w, d, synthetic=synthetic)) if synthetic is not None else None
        out = run_training(scfg, stage.run, "classifier", train_fn=fn)
        model, _ = load_classifier(out["checkpoint"], _device(cfg))
        rep = evaluate_classifier(model, data.test, data.groups, cfg.classifier.eval_batch_size)
        stage.run.tracker.log_metrics({k: rep[k] for k in ACC_KEYS if rep[k] is not None})
        stage.run.write_json("summary.json", {"checkpoint": out["checkpoint"], **_accuracy(rep),
                                              "confusion": rep["confusion"]})
        return {"checkpoint": out["checkpoint"], "report": rep, "mlflow_run_id": stage.run.tracker.run_id}

    res = _timed(stage, go)
    res["seconds"] = round(stage.seconds, 1)
    print(f"[{name}] {method}: all {rep_str(res['report'])}  ({stage.seconds:.0f}s)", flush=True)
    return res


def rep_str(rep: dict[str, Any]) -> str:
    f = lambda v: "  -  " if v is None else f"{100 * v:5.1f}"  # noqa: E731
    return f"{f(rep['acc_all'])}  many {f(rep['acc_many'])}  medium {f(rep['acc_medium'])}  few {f(rep['acc_few'])}"


def evaluate_existing(cfg: Config, parent: Run, data: LTDataset, name: str, checkpoint: str) -> dict[str, Any]:
    from ..classify import load_classifier
    from ..eval import evaluate_classifier

    model, _ = load_classifier(checkpoint, _device(cfg))
    rep = evaluate_classifier(model, data.test, data.groups, cfg.classifier.eval_batch_size)
    print(f"[{name}] (existing {checkpoint}): all {rep_str(rep)}", flush=True)
    return {"checkpoint": checkpoint, "report": rep, "mlflow_run_id": None, "seconds": 0.0}


def diffusion_stage(cfg: Config, parent: Run) -> dict[str, Any]:
    from .train import run_training

    stage = open_stage(parent, "diffusion")

    def go() -> dict[str, Any]:
        out = run_training(cfg, stage.run, "diffusion")
        stage.run.write_json("summary.json", {"checkpoint": out["checkpoint"], "steps": out.get("step")})
        return {"checkpoint": out["checkpoint"], "mlflow_run_id": stage.run.tracker.run_id}

    res = _timed(stage, go)
    res["seconds"] = round(stage.seconds, 1)
    print(f"[diffusion] checkpoint {res['checkpoint']}  ({stage.seconds:.0f}s)", flush=True)
    return res


def generation_stage(cfg: Config, parent: Run) -> dict[str, Any]:
    from .generation import run_generation, setup_generation

    stage = open_stage(parent, "generate")

    def go() -> dict[str, Any]:
        setup = setup_generation(cfg, stage.run.dir)
        plan = setup.plan
        print(f"[generate] plan {plan.digest}: {plan.total} images for classes "
              f"{[c for c, n in enumerate(plan.budget) if n]} -> {setup.output_uri}", flush=True)

        def progress(st, k, n) -> None:
            print(f"[generate] shard {k}/{n} {st.name}: kept {sum(st.kept.values())}/{sum(st.generated.values())} "
                  f"({st.seconds:.1f}s)", flush=True)
            stage.run.tracker.log_metrics({"shards_done": k}, step=k)

        res = run_generation(setup, cfg.resources, on_progress=progress, max_in_flight=cfg.generate.max_in_flight)
        man = res["manifest"]
        stage.run.tracker.log_metrics({"requested": man["requested"], "written": man["written"],
                                       "dropped": man["dropped"], "images_per_s": res["images_per_s"]})
        stage.run.write_json("manifest.json", man)
        stage.run.write_json("summary.json", {"output_uri": setup.output_uri, "manifest": res["manifest_uri"],
                                              "requested": man["requested"], "written": man["written"]})
        return {"output_uri": setup.output_uri, "manifest": man, "manifest_uri": res["manifest_uri"],
                "images_per_s": res["images_per_s"], "mlflow_run_id": stage.run.tracker.run_id}

    res = _timed(stage, go)
    res["seconds"] = round(stage.seconds, 1)
    return res


def generation_counts(manifest: dict[str, Any]) -> dict[str, int]:
    cats = manifest.get("categories", {})
    return {"requested": int(manifest["requested"]), "written": int(manifest["written"]),
            "id": int(cats.get("id", 0)), "aid": int(cats.get("aid", 0)), "ood": int(cats.get("ood", 0))}


def run_pipeline(cfg: Config, run: Run) -> dict[str, Any]:
    """All stages in order; returns the pipeline summary (see ``jobs/pipeline.py``)."""
    from ..classify import load_synthetic, select_synthetic

    t_start = time.perf_counter()
    data = load_dataset(cfg.data)
    counts = data.counts.counts
    print(f"[data] {cfg.data.source}: {data.num_classes} classes, train {list(counts)} "
          f"(r={data.counts.imbalance_ratio:.1f}), test {len(data.test)} balanced; groups "
          + ", ".join(f"{g} {len(v)}" for g, v in data.groups.items()), flush=True)
    stages: dict[str, Any] = {}

    # 1. baseline classifier + feature bank (skipped when classifier.checkpoint points at one)
    if cfg.classifier.checkpoint:
        stages["baseline"] = evaluate_existing(cfg, run, data, "baseline", cfg.classifier.checkpoint)
    else:
        stages["baseline"] = classifier_stage(cfg, run, data, "baseline", cfg.pipeline.baseline_method)
    base_ckpt = stages["baseline"]["checkpoint"]

    # 2. classical long-tail baselines on the real data only
    classical = {m: classifier_stage(cfg, run, data, f"classical-{m}", m) for m in cfg.pipeline.classical}

    # 3. diffusion (AID and the classifier-feature discrepancy use the baseline's features)
    dcfg = with_values(cfg, {"classifier.checkpoint": base_ckpt,
                             **({"train.steps": cfg.pipeline.diffusion_steps} if cfg.pipeline.diffusion_steps else {})})
    if cfg.model.checkpoint:
        diffusion = {"checkpoint": cfg.model.checkpoint, "mlflow_run_id": None, "seconds": 0.0}
        print(f"[diffusion] using existing {cfg.model.checkpoint}", flush=True)
    else:
        diffusion = diffusion_stage(dcfg, run)

    # 4. generation + ID/AID/OOD filtering into shards
    if cfg.pipeline.shards:
        shards = cfg.pipeline.shards
        man_uri = storage.join(shards, "manifest.json")
        manifest = json.loads(storage.read_bytes(man_uri)) if storage.exists(man_uri) else None
        gen = {"output_uri": shards, "manifest": manifest, "mlflow_run_id": None, "seconds": 0.0}
        print(f"[generate] using existing shards {shards}", flush=True)
    else:
        gcfg = with_values(dcfg, {"model.checkpoint": diffusion["checkpoint"]})
        gen = generation_stage(gcfg, run)
        shards = gen["output_uri"]

    # 5. downstream classifier on real + synthetic (weight omega)
    synthetic = load_synthetic(shards, data.train.image_size, data.train.channels, data.num_classes,
                               cfg.data.on_bad_record)
    synthetic = select_synthetic(synthetic, data.train.counts, cfg.classifier.synthetic_max_per_class,
                                 cfg.classifier.synthetic_fill_to, torch.Generator().manual_seed(cfg.seed))
    augmented = classifier_stage(cfg, run, data, "augmented", cfg.pipeline.augmented_method, synthetic=synthetic)

    # 6. evaluation: generative metrics, plots, report
    from .report import write_report

    evaluation = write_report(cfg, run, data, stages["baseline"], classical, augmented, synthetic, gen)
    summary = {
        "baseline": _accuracy(stages["baseline"]["report"]),
        "augmented": _accuracy(augmented["report"]),
        "classical": {m: _accuracy(r["report"]) for m, r in classical.items()},
        "generation": generation_counts(gen["manifest"]) if gen.get("manifest") else
        {"requested": None, "written": len(synthetic), "id": None, "aid": None, "ood": None},
        "mlflow_run_ids": {"pipeline": run.tracker.run_id, "baseline": stages["baseline"]["mlflow_run_id"],
                           **{f"classical-{m}": r["mlflow_run_id"] for m, r in classical.items()},
                           "diffusion": diffusion["mlflow_run_id"], "generate": gen.get("mlflow_run_id"),
                           "augmented": augmented["mlflow_run_id"]},
        "checkpoints": {"baseline": base_ckpt, "diffusion": diffusion["checkpoint"],
                        "augmented": augmented["checkpoint"],
                        **{f"classical-{m}": r["checkpoint"] for m, r in classical.items()}},
        "shards": shards,
        "num_synthetic_used": len(synthetic),
        "generative": evaluation.get("generative"),
        "report": evaluation["report"],
        "seconds": {"total": round(time.perf_counter() - t_start, 1),
                    **{k: v.get("seconds") for k, v in (("baseline", stages["baseline"]), ("diffusion", diffusion),
                                                        ("generate", gen), ("augmented", augmented))},
                    **{f"classical-{m}": r["seconds"] for m, r in classical.items()}},
    }
    run.tracker.log_metrics({**{f"baseline_{k}": v for k, v in summary["baseline"].items() if k in ACC_KEYS and v is not None},
                             **{f"augmented_{k}": v for k, v in summary["augmented"].items() if k in ACC_KEYS and v is not None}})
    print_table(summary)
    return summary


def print_table(summary: dict[str, Any]) -> None:
    rows = [("baseline", summary["baseline"])] + [(m, r) for m, r in summary["classical"].items()] + \
        [("augmented", summary["augmented"])]
    print("\n top-1 on the balanced test set (%)")
    print(f" {'method':<18} {'all':>6} {'many':>6} {'medium':>7} {'few':>6}")
    for name, r in rows:
        f = lambda v: "   -" if v is None else f"{100 * v:6.1f}"  # noqa: E731
        print(f" {name:<18} {f(r['acc_all'])} {f(r['acc_many'])} {f(r['acc_medium']):>7} {f(r['acc_few'])}")
    g = summary["generation"]
    print(f" generation: requested {g['requested']}, written {g['written']} (ID {g['id']}, AID {g['aid']}, "
          f"OOD {g['ood']}); synthetic used {summary['num_synthetic_used']}\n", flush=True)


__all__ = ["run_pipeline", "classifier_stage", "diffusion_stage", "generation_stage", "generation_counts"]
