"""One local Ray per test session (``address="local"``: never a stray cluster), started after the S3 env is set
so that Ray's workers inherit the moto endpoint; shut down at the end of the session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "generate"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jobs"))


@pytest.fixture(scope="session")
def ray_local(s3_server):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_root_conftest", Path(__file__).resolve().parents[1] / "conftest.py")
    root = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(root)
    S3_ENV = root.S3_ENV
    for k, v in {**S3_ENV, "AWS_ENDPOINT_URL": s3_server}.items():
        os.environ[k] = v
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=True, object_store_memory=200 * 2**20,
             log_to_driver=False)
    yield ray
    ray.shutdown()
