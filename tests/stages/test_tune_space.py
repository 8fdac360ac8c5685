"""``tune.space`` syntax (lists, choice, uniform, loguniform, randint), checked up front naming the key; seeded
local sampling; the Optuna searcher through the sequential launcher; a restored local sweep keeps finished trials
and re-runs the interrupted one in its own checkpoint directory."""
from __future__ import annotations

import json
import math
import os
import re

import pytest

from ltaug.config import ConfigError, ResourcesConfig, load_config, with_values
from ltaug.stages import LocalLauncher, Task, TrialSpace
from ltaug.stages.tune import trial_space
from ltaug.track import NullTracker

SPACE = ("tune.space={loss.cbdm: {uniform: [0.5, 2.0]}, loss.cbdm_commit: {loguniform: [0.01, 1.0]}, "
         "guidance.cfg.omega: [0.0, 1.0], guidance.minority.scale: {choice: [0.0, 0.1, 0.2]}, "
         "guidance.minority.every: {randint: [1, 3]}, guidance.minority.start: {uniform: [0.0, 0.4]}, "
         "guidance.cfg.stop: [0.8, 1.0]}")


def _cfg(*sets):
    return load_config(None, list(sets))


@pytest.mark.parametrize("space, needle", [
    ("{loss.cbdm: []}", "tune.space.loss.cbdm: an empty list"),
    ("{loss.cbdm: {normal: [0, 1]}}", "tune.space.loss.cbdm: unknown distribution 'normal'"),
    ("{loss.cbdm: {uniform: [2, 1]}}", "tune.space.loss.cbdm: uniform needs lo < hi"),
    ("{loss.cbdm: {loguniform: [0, 1]}}", "tune.space.loss.cbdm: loguniform needs 0 < lo"),
    ("{loss.cbdm: {uniform: [0, 1, 2]}}", "tune.space.loss.cbdm: uniform takes [lo, hi]"),
    ("{guidance.minority.every: {randint: [1, 2.5]}}", "tune.space.guidance.minority.every: randint bounds"),
    ("{guidance.minority.every: {randint: [0, 3]}}", "tune.space.guidance.minority.every: 0 is not a valid value"),
    ("{guidance.cfg.start: {uniform: [0.5, 1.5]}}", "tune.space.guidance.cfg.start: 1.5 is not a valid value"),
    ("{loss.nope: [1.0]}", "tune.space.loss.nope"),
    ("{loss.cbdm: 0.5}", "tune.space.loss.cbdm: 0.5 does not match"),
])
def test_bad_spaces_fail_up_front_naming_the_key(space, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        trial_space(_cfg(f"tune.space={space}"))


@pytest.mark.parametrize("sets, needle", [
    (["tune.objective=tail_fid"], "tune.objective=tail_fid: .*training.*val_tail_fid"),
    (["tune.objective=val_few_acc"], "tune.objective=val_few_acc: .*not available"),
    (["tune.searcher=optuna", "tune.search=grid"], "tune.searcher=optuna .*tune.search=grid"),
    (["tune.grace_period=9", "tune.train_steps=8"], "tune.grace_period=9 steps"),
    (["tune.space={}"], "tune.space is empty"),
])
def test_bad_tune_settings_name_their_key(sets, needle):
    with pytest.raises(ConfigError, match="^" + needle):
        trial_space(_cfg("tune.space={loss.cbdm: [1.0]}", *sets))


def test_local_sampling_is_seeded_within_bounds_and_every_draw_is_a_valid_config():
    cfg = _cfg(SPACE, "tune.num_samples=6", "tune.search=grid")
    space = trial_space(cfg)
    ov = space.overrides()
    assert len(ov) == 2 * 2 * 6                                  # the two list axes are the grid, x num_samples
    assert ov == trial_space(cfg).overrides()                    # seeded: the same trials every time
    assert ov != trial_space(with_values(cfg, {"seed": 1})).overrides()
    for o in ov:
        assert 0.5 <= o["loss.cbdm"] <= 2.0 and 0.01 <= o["loss.cbdm_commit"] <= 1.0
        assert o["guidance.minority.every"] in (1, 2, 3) and o["guidance.minority.scale"] in (0.0, 0.1, 0.2)
        c = with_values(cfg, o)
        assert c.guidance.minority.start == o["guidance.minority.start"] and c.guidance.cfg.stop in (0.8, 1.0)
    assert {(o["guidance.cfg.omega"], o["guidance.cfg.stop"]) for o in ov} == {(a, b) for a in (0.0, 1.0)
                                                                               for b in (0.8, 1.0)}
    logs = [math.log10(o["loss.cbdm_commit"]) for o in ov]
    assert min(logs) < -1 and max(logs) > -1                     # drawn on the log scale, not clustered at 1
    choice = trial_space(with_values(cfg, {"tune.search": "choice"})).overrides()
    assert len(choice) == 6 and len({o["loss.cbdm"] for o in choice}) == 6


class _Stop(BaseException):
    """Stands for the process dying mid-trial (not a trial failure: the sweep itself stops)."""


def _toy(calls, stop_at=None):
    def fn(task, world, report):
        calls.append(task.ckpt_dir)
        os.makedirs(task.ckpt_dir, exist_ok=True)
        marker = os.path.join(task.ckpt_dir, "progress")
        start = int(open(marker).read()) if os.path.exists(marker) else 0
        for step in range(start + 1, 3):
            open(marker, "w").write(str(step))
            x = task.cfg.loss.cbdm
            report({"val_tail_fid": (x - 1.3) ** 2 + step, "step": float(step), "resumed_from": float(start)})
            if stop_at == (len(calls), step):
                raise _Stop()
    return fn


@pytest.mark.parametrize("searcher", ["random", "optuna"])
def test_an_interrupted_local_sweep_is_restored(tmp_path, searcher):
    if searcher == "optuna":
        pytest.importorskip("optuna")
    cfg = _cfg(f"run.output_dir={tmp_path}", "tune.space={loss.cbdm: {uniform: [0.5, 2.0]}, "
               "guidance.cfg.omega: {choice: [0.0, 1.0]}}", "tune.num_samples=4", f"tune.searcher={searcher}")
    space = trial_space(cfg)
    assert space.searcher == searcher
    task = Task("tune", cfg, "", str(tmp_path / "ck"), str(tmp_path / "run"))
    calls: list[str] = []
    with pytest.raises(_Stop):
        LocalLauncher(ResourcesConfig()).sweep(_toy(calls, stop_at=(3, 1)), task, space, NullTracker())
    first = json.loads((tmp_path / "run" / "tune" / "local" / "trial-0002.json").read_text())
    assert first["done"] is False
    calls2: list[str] = []
    res = LocalLauncher(ResourcesConfig()).sweep(_toy(calls2), task, space, NullTracker())
    assert [r.trial_id for r in res] == ["0000", "0001", "0002", "0003"] and all(r.restored for r in res)
    assert calls2 == [calls[2], str(tmp_path / "ck" / "trial-0003")]   # finished trials are not run again
    assert res[2].overrides == first["overrides"] and res[2].metrics["resumed_from"] == 1.0
    assert all(r.error is None and r.reports == (1 if k == 2 else 2) for k, r in enumerate(res))
    assert all(0.5 <= r.overrides["loss.cbdm"] <= 2.0 for r in res)
    fresh = LocalLauncher(ResourcesConfig()).sweep(_toy([]), Task("tune", cfg, "", str(tmp_path / "ck2"),
                                                                  str(tmp_path / "run2")), space, NullTracker())
    if searcher == "random":                                              # seeded: restore = never stopping
        assert [r.overrides for r in fresh] == [r.overrides for r in res]
    assert not any(r.restored for r in fresh)


def test_a_missing_optuna_is_an_error_naming_the_searcher(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ConfigError, match="^tune.searcher=optuna needs the optuna package"):
        trial_space(_cfg("tune.space={loss.cbdm: [1.0]}", "tune.searcher=optuna"))


def test_trial_space_accepts_plain_tuples_as_lists():
    s = TrialSpace({"loss.cbdm": (0.5, 1.0)}, "grid", 1, "val_tail_fid", "min")
    assert s.overrides() == [{"loss.cbdm": 0.5}, {"loss.cbdm": 1.0}]
