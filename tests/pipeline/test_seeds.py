"""Aggregation over seeds (ltaug/stages/seeds.py) against numpy on fixed numbers: mean, sample std (ddof 1),
per-seed rows, the best classical method chosen on validation (never on test) and the paired difference."""
from __future__ import annotations

import numpy as np
import pytest

from ltaug.stages.seeds import aggregate, best_on_validation, mean_std, paired

ACC = ("acc_all", "acc_many", "acc_medium", "acc_few")


def _row(seed, acc, val, ckpt="c"):
    return {"seed": seed, **dict(zip(ACC, acc)), **{f"val_{k}": v for k, v in zip(ACC, val)},
            "per_class": [acc[0], acc[3]], "checkpoint": f"{ckpt}{seed}", "mlflow_run_id": f"r{seed}",
            "confusion": [[1]], "seconds": 1.0}


AUG = [_row(0, (0.90, 0.95, 0.85, 0.70), (0.91, 0.95, 0.86, 0.72)),
       _row(1, (0.92, 0.96, 0.88, 0.75), (0.90, 0.94, 0.85, 0.70)),
       _row(2, (0.91, 0.95, 0.86, 0.74), (0.92, 0.96, 0.87, 0.73))]
# "test_best" is better on test but worse on validation: it must not be chosen
VAL_BEST = [_row(0, (0.89, 0.96, 0.84, 0.60), (0.90, 0.96, 0.84, 0.66)),
            _row(1, (0.88, 0.95, 0.83, 0.65), (0.89, 0.95, 0.83, 0.68)),
            _row(2, (0.90, 0.97, 0.85, 0.62), (0.91, 0.96, 0.85, 0.64))]
TEST_BEST = [_row(s, (0.95, 0.97, 0.93, 0.90), (0.80, 0.95, 0.80, 0.40)) for s in (0, 1, 2)]


def test_aggregate_matches_numpy():
    e = aggregate(AUG, "augmented")
    for k in ACC:
        a = np.array([r[k] for r in AUG])
        assert e[k] == pytest.approx(a.mean(), abs=1e-12) and e[f"{k}_std"] == pytest.approx(a.std(ddof=1), abs=1e-12)
        v = np.array([r[f"val_{k}"] for r in AUG])
        assert e[f"val_{k}"] == pytest.approx(v.mean()) and e[f"val_{k}_std"] == pytest.approx(v.std(ddof=1))
    assert e["per_class"] == pytest.approx(np.mean([r["per_class"] for r in AUG], axis=0).tolist())
    assert [r["seed"] for r in e["seeds"]] == [0, 1, 2]
    assert set(e["seeds"][0]) == {"seed", *ACC, *(f"val_{k}" for k in ACC), "checkpoint", "mlflow_run_id"}
    assert e["seeds"][1]["checkpoint"] == "c1" and e["seeds"][1]["acc_few"] == 0.75


def test_single_seed_and_missing_values():
    e = aggregate(AUG[:1])
    assert e["acc_few"] == 0.70 and e["acc_few_std"] is None        # std of one seed: None (undefined)
    assert mean_std([None, None]) == (None, None)                    # an empty validation split
    with pytest.raises(ValueError, match="val_acc_few: missing for some seeds"):
        aggregate([AUG[0], {**AUG[1], "val_acc_few": None}], "m")
    with pytest.raises(ValueError, match="seed repeated"):
        aggregate([AUG[0], AUG[0]], "m")


def test_best_classical_chosen_on_validation_and_paired_difference():
    classical = {"test_best": aggregate(TEST_BEST, "test_best"), "val_best": aggregate(VAL_BEST, "val_best")}
    assert best_on_validation(classical)[0] == "val_best"
    p = paired(aggregate(AUG), classical)
    assert p["against"] == "val_best" and p["selected_on"] == "val_acc_few"
    assert [r["seed"] for r in p["rows"]] == [0, 1, 2]
    for k in ACC:
        d = np.array([a[k] - b[k] for a, b in zip(AUG, VAL_BEST)])
        assert [r[k] for r in p["rows"]] == pytest.approx(d.tolist())
        assert p[k] == pytest.approx(d.mean()) and p[f"{k}_std"] == pytest.approx(d.std(ddof=1))
    # no classical method, or no validation split: no pick (never on test)
    assert paired(aggregate(AUG), {})["against"] is None
    noval = [{**r, **{f"val_{k}": None for k in ACC}} for r in VAL_BEST]
    p2 = paired(aggregate(AUG), {"val_best": aggregate(noval)})
    assert p2["against"] is None and "validation" in p2["reason"] and p2["acc_few"] is None


def test_seed_config_errors_name_the_key():
    from ltaug.config import Config, ConfigError, with_values
    from ltaug.stages.pipeline import check_seeds

    with pytest.raises(ConfigError, match=r"pipeline.seeds: \[1, 1\] repeats a seed"):
        with_values(Config(), {"pipeline.seeds": [1, 1]})
    with pytest.raises(ConfigError, match="pipeline.seeds: .* negative"):
        with_values(Config(), {"pipeline.seeds": [-1]})
    cfg = with_values(Config(), {"pipeline.seeds": [0, 1], "pipeline.seed_diffusion": True, "pipeline.shards": "/x"})
    with pytest.raises(ValueError, match="pipeline.seed_diffusion=true .* pipeline.shards='/x'"):
        check_seeds(cfg)
    check_seeds(with_values(cfg, {"pipeline.seed_diffusion": False}))     # one shard set for all seeds: fine
