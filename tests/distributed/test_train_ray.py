"""Ray Train: 2 workers (gloo DDP) run the same pure train function as the local job; an injected worker
failure resumes from the last checkpoint; a 2-worker checkpoint resumes on 1 worker; metrics reach MLflow."""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.ray]

TINY = ["data.image_size=8", "model.ch=8", "model.ch_mult=[1,2]", "model.attn_resolutions=[]", "model.groups=4",
        "model.dropout=0.0", "train.steps=6", "train.batch_size=16", "train.log_every=2", "train.ckpt_every=2",
        "train.warmup=0", "train.ema_decay=0.9", "diffusion.timesteps=50", "train.sample_every=0"]


def _cfg(tmp_path, *extra):
    from ltaug.config import load_config

    return load_config(None, TINY + [f"run.output_dir={tmp_path}/runs",
                                     f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", *extra])


@pytest.mark.slow
def test_two_workers_failure_resume_and_n_to_m(ray_local, tmp_path):
    from mlflow.tracking import MlflowClient

    from ltaug.cli import open_run
    from ltaug.distributed.train import run_training
    from ltaug.train import checkpoint as ckpt_io

    cfg = _cfg(tmp_path, "resources.num_workers=2", "resources.cpus_per_worker=0.5", "resources.max_failures=1")
    run = open_run(cfg, "train_diffusion")
    try:
        out = run_training(cfg, run, "diffusion", fail_at_step=4)
    finally:
        run.tracker.close()
    assert out["world_size"] == 2 and out["step"] == 6
    assert out["resumed_from"] == 4                         # the restarted group resumed from ckpt-4
    assert out["checkpoint"].endswith("ckpt-000000006.pt") and "ray_checkpoint" in out
    ck = ckpt_io.load(out["checkpoint"])
    assert ck["step"] == 6 and not any(k.startswith("module.") for k in ck["model"])   # unwrapped weights
    hist = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_metric_history(run.tracker.run_id, "loss")
    assert sorted({m.step for m in hist}) == [2, 4, 6]     # rank 0 only (one series), steps 2, 4 (twice: retry), 6

    # N -> M: the 2-worker checkpoint directory resumes on 1 worker and trains on to step 8
    cfg1 = _cfg(tmp_path, "resources.num_workers=1", "train.steps=8", "tracking.uri=none")
    run1 = open_run(cfg1, "train_diffusion", tracked=False)
    out1 = run_training(cfg1, run1, "diffusion", ckpt_dir=run.path("checkpoints"))
    assert out1["world_size"] == 1 and out1["resumed_from"] == 6 and out1["step"] == 8


def test_num_workers_zero_runs_in_process_without_ray(tmp_path, monkeypatch):
    import sys

    from ltaug.cli import open_run
    from ltaug.distributed.train import run_training

    cfg = _cfg(tmp_path, "resources.num_workers=0", "train.steps=2", "tracking.uri=none")
    run = open_run(cfg, "train_diffusion", tracked=False)
    before = "ray.train" in sys.modules
    out = run_training(cfg, run, "diffusion")
    assert out["world_size"] == 1 and out["step"] == 2
    assert ("ray.train" in sys.modules) == before
