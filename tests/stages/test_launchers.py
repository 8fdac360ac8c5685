"""The local launcher and the trial space: what the stages rely on, without Ray."""
from __future__ import annotations

import pytest

from ltaug.config import ResourcesConfig, load_config
from ltaug.stages import LocalLauncher, Task, TrialSpace
from ltaug.track import NullTracker


def test_grid_and_choice_trials():
    grid = TrialSpace({"loss.cbdm": (0.5, 1.0), "guidance.cfg.omega": (0.0, 2.0)}, "grid", 2, "tail_fid", "min")
    ov = grid.overrides()
    assert len(ov) == 8 and len({tuple(sorted(o.items())) for o in ov}) == 4
    choice = TrialSpace({"loss.cbdm": (0.5, 1.0, 2.0)}, "choice", 5, "tail_fid", "min", seed=3)
    picks = choice.overrides()
    assert len(picks) == 5 and all(o["loss.cbdm"] in (0.5, 1.0, 2.0) for o in picks)
    assert picks == TrialSpace({"loss.cbdm": (0.5, 1.0, 2.0)}, "choice", 5, "tail_fid", "min", seed=3).overrides()


class _Tracker(NullTracker):
    def __init__(self) -> None:
        self.children: dict[str, "_Tracker"] = {}
        self.metrics: list[tuple[dict, int]] = []
        self.params: dict = {}
        self.status = None

    def child(self, name):
        self.children[name] = _Tracker()
        return self.children[name]

    def log_metrics(self, metrics, step=None):
        self.metrics.append((dict(metrics), step))

    def log_params(self, params):
        self.params.update(params)

    def close(self, status="FINISHED"):
        self.status = status


def _trial(task, world, report):
    """A toy trial: reports twice; the objective depends on the trial's overrides; omega=2 fails."""
    if task.cfg.guidance.cfg.omega == 2.0:
        raise ValueError("this trial fails on purpose")
    for k in (1, 2):
        report({"tail_fid": task.cfg.loss.cbdm * 10 + k, "step": float(k)})


def test_local_sweep_runs_every_trial_with_its_overrides_and_records_failures(tmp_path):
    cfg = load_config(None, [f"run.output_dir={tmp_path}"])
    space = TrialSpace({"loss.cbdm": (0.5, 1.0), "guidance.cfg.omega": (0.0, 2.0)}, "grid", 1, "tail_fid", "min")
    tracker = _Tracker()
    res = LocalLauncher(ResourcesConfig()).sweep(_trial, Task("toy", cfg, "", str(tmp_path / "ck"), str(tmp_path)),
                                                 space, tracker)
    assert [r.overrides for r in res] == space.overrides()
    ok = [r for r in res if r.error is None]
    assert len(ok) == 2 and all(r.reports == 2 for r in ok)
    assert sorted(r.metrics["tail_fid"] for r in ok) == [7.0, 12.0]          # the last report of each trial
    failed = [r for r in res if r.error]
    assert len(failed) == 2 and all("fails on purpose" in r.error for r in failed)
    kids = list(tracker.children.values())
    assert len(kids) == 4 and sorted(k.status for k in kids) == ["FAILED", "FAILED", "FINISHED", "FINISHED"]
    assert all(k.params for k in kids)                                      # each child run names its overrides


def test_local_launcher_train_reports_through_the_tracker(tmp_path):
    cfg = load_config(None, [f"run.output_dir={tmp_path}"])
    tracker = _Tracker()

    def fn(task, world, trk):
        world.report({"loss": 1.5}, 3)
        return {"checkpoint": "x", "rank": world.rank}

    out = LocalLauncher(cfg.resources).train(fn, Task("toy", cfg, "", "", str(tmp_path)), tracker)
    assert out == {"checkpoint": "x", "rank": 0, "world_size": 1}
    assert tracker.metrics == [({"loss": 1.5}, 3)]


def test_a_requested_gpu_that_is_missing_is_an_error_naming_the_key():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from ltaug.config import ConfigError

    with pytest.raises(ConfigError, match="resources.use_gpu"):
        LocalLauncher(ResourcesConfig(use_gpu=True))
