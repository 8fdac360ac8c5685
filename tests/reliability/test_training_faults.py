"""Training faults: a corrupt / truncated / malicious newest checkpoint is detected and the previous one used
(through ``fit`` resume and through ``load_classifier`` / ``load_diffusion`` on a directory); a Ray Train
worker whose *process dies* (os._exit, not a Python exception) is restarted and resumes from the last
checkpoint."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ltaug.train import LocalWorld, LoopSpec, StepBatches, fit
from ltaug.train import checkpoint as ckpt_io

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "generate"))
from fakes import tiny_classifier_checkpoint, tiny_diffusion_checkpoint  # noqa: E402

torch.set_num_threads(1)

X = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
Y = X.sum(1, keepdim=True)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


def _objective(model, step, g):
    idx = StepBatches(32, 8, seed=5).indices(step)
    loss = (model(X[idx]) - Y[idx]).pow(2).mean()
    return loss, {"mse": float(loss.detach())}


def _spec(steps: int) -> LoopSpec:
    return LoopSpec(steps=steps, lr=0.01, optimizer="adam", momentum=0.0, weight_decay=0.0, warmup=0, milestones=(),
                    gamma=0.1, grad_clip=1.0, ema_decay=0.9, amp=False, grad_accum=1, log_every=1, ckpt_every=2, keep_checkpoints=5,
                    seed=3, desc="train")


def _fit(steps: int, d: Path):
    return fit(_net(), _objective, _spec(steps), LocalWorld("cpu"), ckpt_dir=str(d), progress=False)


class _Evil:
    """Unpickling this runs ``touch <marker>``: what a hostile checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _corrupt(path: str, how: str, tmp: Path) -> None:
    if how == "truncated":
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) // 2)
    elif how == "garbage":
        Path(path).write_bytes(os.urandom(512))
    elif how == "empty":
        Path(path).write_bytes(b"")
    elif how == "pickled_callable":
        torch.save({"format": ckpt_io.FORMAT, "step": 999, "model": _Evil(str(tmp / "PWNED"))}, path)
    else:
        raise AssertionError(how)


CORRUPTIONS = ["truncated", "garbage", "empty", "pickled_callable"]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_fit_resumes_from_previous_checkpoint_when_newest_is_bad(tmp_path, how):
    d = tmp_path / "ck"
    _fit(4, d)                                                  # ckpt-2, ckpt-4
    _corrupt(ckpt_io.path_for(str(d), 4), how, tmp_path)
    with pytest.warns(UserWarning, match=r"skipping unusable checkpoint: .*ckpt-000000004\.pt"):
        res = _fit(6, d)
    assert res.resumed_from == 2 and res.step == 6               # the previous good one, then trained on
    assert not (tmp_path / "PWNED").exists()                     # the pickled callable never ran
    assert ckpt_io.load(ckpt_io.path_for(str(d), 6))["step"] == 6


def test_resumed_run_equals_uninterrupted_after_corruption(tmp_path):
    """Falling back to ckpt-2 loses no correctness: the result equals a run that was never interrupted."""
    clean = _fit(6, tmp_path / "clean")
    d = tmp_path / "faulty"
    _fit(4, d)
    _corrupt(ckpt_io.path_for(str(d), 4), "truncated", tmp_path)
    with pytest.warns(UserWarning):
        res = _fit(6, d)
    for (k, a), b in zip(clean.model.state_dict().items(), res.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_pickled_callable_is_refused_with_a_clear_error(tmp_path):
    p = str(tmp_path / "evil.pt")
    _corrupt(p, "pickled_callable", tmp_path)
    with pytest.raises(ckpt_io.CheckpointError, match=r"evil\.pt: not a loadable checkpoint \(UnpicklingError"):
        ckpt_io.load(p)
    from ltaug.classify import load_classifier
    from ltaug.diffusion.train import load_diffusion

    for loader in (load_classifier, load_diffusion):
        with pytest.raises(ckpt_io.CheckpointError, match="not a loadable checkpoint"):
            loader(p)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("how", ["truncated", "pickled_callable"])
def test_loaders_on_a_directory_skip_a_bad_newest_checkpoint(tmp_path, how):
    from ltaug.classify import load_classifier
    from ltaug.diffusion.train import load_diffusion

    cd, dd = tmp_path / "clf", tmp_path / "diff"
    cd.mkdir(), dd.mkdir()
    good_c = tiny_classifier_checkpoint(ckpt_io.path_for(str(cd), 1))
    shutil.copy(good_c, ckpt_io.path_for(str(cd), 2))
    good_d = tiny_diffusion_checkpoint(ckpt_io.path_for(str(dd), 1))
    shutil.copy(good_d, ckpt_io.path_for(str(dd), 2))
    for d in (cd, dd):
        _corrupt(ckpt_io.path_for(str(d), 2), how, tmp_path)
    with pytest.warns(UserWarning, match=r"ckpt-000000002\.pt"):
        model, bank = load_classifier(str(cd))
    ref, _ = load_classifier(good_c)
    assert bank is not None
    for a, b in zip(model.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.warns(UserWarning, match=r"ckpt-000000002\.pt"):
        ld = load_diffusion(str(dd))
    assert ld.step == 1 and ld.num_classes == 4
    assert not (tmp_path / "PWNED").exists()
    # nothing usable at all: a clear error, not a traceback deep in torch
    for d in (cd, dd):
        _corrupt(ckpt_io.path_for(str(d), 1), "garbage", tmp_path)
    with pytest.warns(UserWarning), pytest.raises(ckpt_io.CheckpointError, match="no valid ckpt-<step>.pt checkpoint"):
        load_classifier(str(cd))
    with pytest.warns(UserWarning), pytest.raises(ckpt_io.CheckpointError, match="no valid ckpt-<step>.pt checkpoint"):
        load_diffusion(str(dd))


# ------------------------------------------------------------------ Ray Train: a worker process dies


def _dying_train_fn(task, world, tracker) -> dict:
    """A tiny fit whose worker process exits hard (no exception, no cleanup) at step 3 of the first attempt."""
    torch.set_num_threads(1)
    ckpt_dir = task.ckpt_dir
    marker = os.path.join(os.path.dirname(ckpt_dir), "_killed_once")

    def maybe_die(st) -> None:
        if st.step >= 3 and not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            os._exit(137)                                   # like SIGKILL / an OOM kill: the process is gone

    res = fit(_net(), _objective, _spec(6), world, ckpt_dir=ckpt_dir, progress=False, every=[(1, maybe_die)])
    return {"checkpoint": res.checkpoint, "step": res.step, "resumed_from": res.resumed_from, "pid": os.getpid()}


@pytest.mark.slow
@pytest.mark.ray
def test_ray_train_worker_process_death_resumes_from_last_checkpoint(ray_session, tmp_path):
    import ray.cloudpickle

    from ltaug.config import load_config
    from ltaug.distributed import RayLauncher
    from ltaug.stages import Task, open_run

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers cannot import this test module
    try:
        cfg = load_config(None, [f"run.output_dir={tmp_path}/runs", "tracking.uri=none", "resources.num_workers=1",
                                 "resources.cpus_per_worker=1", "resources.max_failures=1"])
        run = open_run(cfg, "train_faults", tracked=False)
        task = Task("toy", cfg, "", run.path("checkpoints"), run.dir)
        out = RayLauncher(cfg).train(_dying_train_fn, task, run.tracker)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    killed_pid = int(Path(run.dir, "_killed_once").read_text())
    assert out["step"] == 6 and out["resumed_from"] == 2     # died after step 3: resumed from ckpt-2
    assert out["pid"] != killed_pid                           # a new worker process finished the job
    assert [s for s, _ in ckpt_io.list_checkpoints(run.path("checkpoints"))][-1] == 6
