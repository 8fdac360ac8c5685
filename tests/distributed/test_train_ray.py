"""Ray Train: 2 workers (gloo DDP) run the same stage worker function as the local launcher; an injected worker
failure resumes from the last checkpoint; a 2-worker checkpoint resumes on 1 worker; metrics reach MLflow
through the tracker handed to the workers; the summary keys do not depend on the launcher."""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.ray]

TINY = ["data.image_size=8", "model.ch=8", "model.ch_mult=[1,2]", "model.attn_resolutions=[]", "model.groups=4",
        "model.dropout=0.0", "train.steps=6", "train.batch_size=16", "train.log_every=2", "train.ckpt_every=2",
        "train.warmup=0", "train.ema_decay=0.9", "diffusion.timesteps=50", "train.sample_every=0", "sample.steps=2"]


def _cfg(tmp_path, *extra):
    from ltaug.config import load_config

    return load_config(None, TINY + [f"run.output_dir={tmp_path}/runs",
                                     f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", *extra])


@pytest.mark.slow
def test_two_workers_failure_resume_and_n_to_m(ray_local, tmp_path):
    from mlflow.tracking import MlflowClient

    from ltaug.cli import make_launcher
    from ltaug.distributed import RayLauncher
    from ltaug.stages import LocalLauncher, open_run, train_diffusion
    from ltaug.train import checkpoint as ckpt_io

    cfg = _cfg(tmp_path, "resources.num_workers=2", "resources.cpus_per_worker=0.5", "resources.max_failures=1")
    assert isinstance(make_launcher(cfg), RayLauncher)
    run = open_run(cfg, "train_diffusion")
    try:
        out = train_diffusion(cfg, run, RayLauncher(cfg, fail_at_step=4))
    finally:
        run.tracker.close()
    assert out["world_size"] == 2 and out["steps"] == 6
    assert out["resumed_from"] == 4                         # the restarted group resumed from ckpt-4
    assert out["checkpoint"].endswith("ckpt-000000006.pt")
    assert len(out["grids"]) == 1 and out["grids"][0].endswith("grid-000000006.png")   # rank 0 drew the grid
    ck = ckpt_io.load(out["checkpoint"])
    assert ck["step"] == 6 and not any(k.startswith("module.") for k in ck["model"])   # unwrapped weights
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    hist = client.get_metric_history(run.tracker.run_id, "loss")
    assert sorted({m.step for m in hist}) == [2, 4, 6]     # rank 0 only (one series), steps 2, 4 (twice: retry), 6
    arts = [a.path for a in client.list_artifacts(run.tracker.run_id, "samples")]
    assert arts == ["samples/grid-000000006.png"]           # the worker's artifact reached the job's MLflow run

    # N -> M: the 2-worker checkpoint directory resumes on 1 worker and trains on to step 8
    cfg1 = _cfg(tmp_path, "resources.num_workers=1", "train.steps=8", "tracking.uri=none")
    run1 = open_run(cfg1, "train_diffusion", tracked=False)
    out1 = train_diffusion(cfg1, run1, RayLauncher(cfg1), ckpt_dir=run.path("checkpoints"))
    assert out1["world_size"] == 1 and out1["resumed_from"] == 6 and out1["steps"] == 8

    # the local launcher continues the same directory to step 10, and reports the same summary keys
    cfg0 = _cfg(tmp_path, "resources.num_workers=0", "train.steps=10", "tracking.uri=none")
    assert isinstance(make_launcher(cfg0), LocalLauncher)
    out0 = train_diffusion(cfg0, open_run(cfg0, "train_diffusion", tracked=False), make_launcher(cfg0),
                           ckpt_dir=run.path("checkpoints"))
    assert out0["resumed_from"] == 8 and out0["steps"] == 10 and out0["world_size"] == 1
    assert set(out0) == set(out1) == set(out)
