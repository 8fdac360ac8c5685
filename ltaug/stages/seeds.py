"""Several seeds in the pipeline: per-method mean / sample std over seeds, and the paired difference
augmented minus the best classical method (chosen on the validation split, never on the test set).

A method's entry keeps ``acc_*`` / ``val_acc_*`` (the mean over seeds), adds ``acc_*_std`` / ``val_acc_*_std``
(sample standard deviation, ddof = 1; None for a single seed, where it is undefined) and ``seeds`` (one row
per seed: seed, acc_*, val_acc_*, checkpoint, mlflow_run_id); ``per_class`` is the per-class mean.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .train_classifier import ACC_KEYS, VAL_ACC_KEYS

ROW_KEYS = ("seed", *ACC_KEYS, *VAL_ACC_KEYS, "checkpoint", "mlflow_run_id")
SELECT_KEYS = ("val_acc_few", "val_acc_all")   # best classical: highest mean val_acc_few, ties by val_acc_all


def mean_std(values: Sequence[float | None], what: str = "value") -> tuple[float | None, float | None]:
    """(mean, sample std with ddof = 1) of per-seed values; std None for one value; (None, None) when every
    value is None (e.g. an empty validation split). Some None and some not is an error naming ``what``."""
    missing = [v is None for v in values]
    if not values or all(missing):
        return None, None
    if any(missing):
        raise ValueError(f"{what}: missing for some seeds but not others ({list(values)})")
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None)


def _mean_per_class(rows: Sequence[Sequence[float | None]]) -> list[float | None]:
    return [None if any(v is None for v in col) else float(np.mean(col)) for col in zip(*rows)]


def aggregate(rows: Sequence[Mapping[str, Any]], name: str = "method") -> dict[str, Any]:
    """One method's entry from its per-seed stage results (each with ``seed``, ``acc_*``, ``val_acc_*``,
    ``per_class``, ``checkpoint``, ``mlflow_run_id``)."""
    if not rows:
        raise ValueError(f"{name}: no per-seed results to aggregate")
    seeds = [r["seed"] for r in rows]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{name}: seed repeated in {seeds}")
    out: dict[str, Any] = {}
    for k in (*ACC_KEYS, *VAL_ACC_KEYS):
        out[k], out[f"{k}_std"] = mean_std([r.get(k) for r in rows], f"{name}.{k}")
    if all(r.get("per_class") is not None for r in rows):
        out["per_class"] = _mean_per_class([r["per_class"] for r in rows])
    out["seeds"] = [{k: r.get(k) for k in ROW_KEYS} for r in rows]
    return out


def best_on_validation(methods: Mapping[str, Mapping[str, Any]]) -> tuple[str | None, str]:
    """(name, reason): the method with the highest mean ``val_acc_few`` (ties: ``val_acc_all``, then config
    order). (None, reason) when there is no method or no validation split — never chosen on test."""
    if not methods:
        return None, "no classical method (pipeline.classical is empty)"
    if any(m.get("val_acc_few") is None for m in methods.values()):
        return None, "no validation split (val_acc_few is empty): the best classical method is not chosen on test"
    order = list(methods)
    name = max(order, key=lambda m: (methods[m]["val_acc_few"], methods[m].get("val_acc_all") or 0.0, -order.index(m)))
    return name, "highest mean val_acc_few over seeds (ties: val_acc_all)"


def paired(augmented: Mapping[str, Any], classical: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Augmented minus the best classical method (selected on validation), per seed and as mean / sample std
    of the per-seed differences, for acc_all / many / medium / few (balanced test set)."""
    against, reason = best_on_validation(classical)
    out: dict[str, Any] = {"against": against, "selected_on": "val_acc_few", "reason": reason,
                           "candidates": {m: {k: r.get(k) for k in SELECT_KEYS} for m, r in classical.items()}}
    if against is None:
        return {**out, "rows": [], **{k: None for k in ACC_KEYS}, **{f"{k}_std": None for k in ACC_KEYS}}
    aug = {r["seed"]: r for r in augmented["seeds"]}
    ref = {r["seed"]: r for r in classical[against]["seeds"]}
    if set(aug) != set(ref):
        raise ValueError(f"paired difference: augmented seeds {sorted(aug)} differ from {against}'s {sorted(ref)}")
    rows = [{"seed": s, **{k: aug[s][k] - ref[s][k] for k in ACC_KEYS if aug[s][k] is not None and ref[s][k] is not None}}
            for s in aug]
    for k in ACC_KEYS:
        out[k], out[f"{k}_std"] = mean_std([r.get(k) for r in rows], f"paired.{k}")
    return {**out, "rows": rows}


__all__ = ["aggregate", "best_on_validation", "mean_std", "paired", "ROW_KEYS", "SELECT_KEYS"]
