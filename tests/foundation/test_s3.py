"""Reading through a real S3 HTTP endpoint (moto's server on 127.0.0.1), configured only by AWS_* env vars."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from formats import write_cifar10, write_idx, write_imagefolder, write_shard
from ltaug import storage
from ltaug.config import load_config
from ltaug.data import load_dataset
from ltaug.data.shards import read_shards

pytestmark = pytest.mark.s3
ROOT = Path(__file__).resolve().parents[2]


def dcfg(*sets):
    return load_config(None, list(sets)).data


def test_cifar_from_s3_equals_local(tmp_path, upload):
    write_cifar10(tmp_path, 20, 3, batches=2)
    uri = upload(tmp_path, "datasets/cifar")
    sets = ["data.source=cifar10", "data.imbalance_ratio=10", "data.image_size=8"]
    local = load_dataset(dcfg(*sets, f"data.root={tmp_path}"))
    remote = load_dataset(dcfg(*sets, f"data.root={uri}"))
    assert remote.train.counts == local.train.counts
    assert np.array_equal(remote.train.images, local.train.images)


def test_idx_folder_and_shards_from_s3(tmp_path, upload):
    write_idx(tmp_path / "mnist", 3, 1)
    write_imagefolder(tmp_path / "folder", {"a": 2, "b": 1}, "train")
    write_imagefolder(tmp_path / "folder", {"a": 1, "b": 1}, "test")
    write_shard(tmp_path / "shards" / "s-000000.tar",
                [(f"k{i}", np.full((5, 5, 3), i, np.uint8), i % 2) for i in range(4)])
    m = SOURCES_mnist = load_dataset(dcfg("data.source=mnist", f"data.root={upload(tmp_path / 'mnist', 'mnist')}",
                                          "data.imbalance_ratio=1"))
    assert len(m.train) == 30
    f = load_dataset(dcfg("data.source=imagefolder", f"data.root={upload(tmp_path / 'folder', 'folder')}",
                          "data.imbalance_ratio=1", "data.image_size=8"))
    assert f.train.counts.counts == (2, 1)
    s = read_shards(upload(tmp_path / "shards", "shards"), 5)
    assert s.counts.counts == (2, 2) and s.images[3].max() == 3


def test_storage_round_trip_and_listing(s3):
    storage.write_text(f"{s3}/a/b.txt", "hello")
    storage.write_bytes(f"{s3}/a/c.tar", b"x")
    assert storage.read_bytes(f"{s3}/a/b.txt") == b"hello"
    assert storage.listdir(f"{s3}/a", ".tar") == [f"{s3}/a/c.tar"]
    assert storage.exists(f"{s3}/a/b.txt") and not storage.exists(f"{s3}/a/nope")
    storage.check_access(f"{s3}/a", write=True)


def test_missing_bucket_is_a_clear_error(s3):
    with pytest.raises(storage.StorageError, match="bucket 'no-such-bucket-xyz' does not exist"):
        storage.check_access("s3://no-such-bucket-xyz/prefix")


def test_unreachable_endpoint_is_a_clear_error(monkeypatch, s3):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    monkeypatch.setattr(storage, "RETRIES", 1)
    with pytest.raises(storage.StorageError, match="cannot reach the S3 endpoint http://127.0.0.1:9"):
        storage.check_access(f"{s3}/x")


def test_inspect_data_from_s3_matches_formula(tmp_path, upload):
    write_cifar10(tmp_path / "c", per_class_train=40, per_class_test=4, batches=2)
    uri = upload(tmp_path / "c", "cifar")
    out = subprocess.run([sys.executable, "jobs/inspect_data.py", "--config", "configs/quickstart.yaml",
                          "--set", "data.source=cifar10", "--set", f"data.root={uri}",
                          "--set", "data.imbalance_ratio=10", "--set", f"run.output_dir={tmp_path / 'runs'}"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300, env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((Path(out.stdout.strip().splitlines()[-1]) / "summary.json").read_text())
    profile = [int(np.floor(40 * 0.1 ** (k / 9))) for k in range(10)]
    assert [t + h for t, h in zip(summary["train_counts"], summary["val_held_out"])] == profile
    # the secret never reaches written configs, summaries or logs
    run_dir = Path(out.stdout.strip().splitlines()[-1])
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    for p in run_dir.rglob("*"):
        if p.is_file():
            assert secret.encode() not in p.read_bytes(), p
    assert secret not in out.stdout + out.stderr


def test_run_dir_on_s3(tmp_path, s3):
    out = subprocess.run([sys.executable, "jobs/inspect_data.py", "--config", "configs/quickstart.yaml",
                          "--set", f"run.output_dir={s3}/runs", "--set", "tracking.uri=none"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300, env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-3000:]
    run_uri = out.stdout.strip().splitlines()[-1]
    assert run_uri.startswith(s3)
    summary = json.loads(storage.read_bytes(f"{run_uri}/summary.json"))
    assert len(summary["train_counts"]) == 10
