"""The trial space as Ray Tune's (no cluster needed): lists -> grid_search / choice, ranges -> uniform /
loguniform / randint (ends included), and Ray's OptunaSearch suggests valid configs from that space."""
from __future__ import annotations

import pytest

from ltaug.config import load_config, with_values
from ltaug.stages.tune import trial_space

pytestmark = pytest.mark.ray

SPACE = ("tune.space={loss.cbdm: {uniform: [0.5, 2.0]}, loss.cbdm_commit: {loguniform: [0.01, 1.0]}, "
         "guidance.cfg.omega: [0.0, 1.0], guidance.minority.every: {randint: [1, 3]}, "
         "guidance.minority.scale: {choice: [0.0, 0.2]}}")


def test_param_space_maps_every_kind():
    from ray.tune.search.sample import Categorical, Float, Integer

    from ltaug.distributed.sweep import param_space

    grid = param_space(trial_space(load_config(None, [SPACE, "tune.search=grid"])))["overrides"]
    assert grid["guidance.cfg.omega"] == {"grid_search": [0.0, 1.0]}
    assert isinstance(grid["guidance.minority.scale"], Categorical)           # {choice} stays a random pick
    u, lu, ri = grid["loss.cbdm"], grid["loss.cbdm_commit"], grid["guidance.minority.every"]
    assert isinstance(u, Float) and (u.lower, u.upper) == (0.5, 2.0)
    assert isinstance(lu, Float) and "LogUniform" in type(lu.sampler).__name__
    assert isinstance(ri, Integer) and (ri.lower, ri.upper) == (1, 4)          # Ray's upper end is exclusive
    plain = param_space(trial_space(load_config(None, [SPACE])))["overrides"]
    assert isinstance(plain["guidance.cfg.omega"], Categorical)


def test_optuna_search_suggests_valid_configs_from_the_space():
    pytest.importorskip("optuna")
    from ray.tune.search.optuna import OptunaSearch

    from ltaug.distributed.sweep import param_space

    cfg = load_config(None, [SPACE, "tune.searcher=optuna"])
    space = trial_space(cfg)
    search = OptunaSearch(seed=0)
    assert search.set_search_properties("val_tail_fid", "min", param_space(space))
    for k in range(3):
        ov = search.suggest(f"t{k}")["overrides"]
        assert set(ov) == set(cfg.tune.space) and ov["guidance.minority.every"] in (1, 2, 3)
        assert 0.01 <= ov["loss.cbdm_commit"] <= 1.0
        with_values(cfg, ov)
        search.on_trial_complete(f"t{k}", {"val_tail_fid": float(k), "training_iteration": 1})
