"""Storage faults through the generate job: a missing bucket, an unreachable endpoint and missing credentials
are one clear line on stderr and exit code 2 before any model is loaded (no traceback); a transient error on
the shard-publish path is retried with back-off and counted."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ltaug import storage

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "jobs"))

pytestmark = [pytest.mark.s3]

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _gen_job(args: list[str]) -> int:
    import generate as gen_job

    from ltaug.cli import job_main

    return job_main("generate", "test", gen_job.body, args, add_args=gen_job.add_args)


def _args(out: str, tmp_path: Path) -> list[str]:
    # the checkpoint does not exist: if the job got as far as loading a model the error would name it instead
    return ["--set", f"generate.output_uri={out}", "--set", f"model.checkpoint={tmp_path}/never-read.pt",
            "--set", f"run.output_dir={tmp_path}/runs", "--set", "tracking.uri=none"]


def test_missing_bucket_fails_fast_through_the_job_subprocess(s3, tmp_path):
    t0 = time.time()
    out = subprocess.run([sys.executable, "jobs/generate.py", *_args("s3://ltaug-missing-bucket-zz/gen", tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, env={**ENV, **os.environ}, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    err = out.stderr.strip()
    assert "error: s3://ltaug-missing-bucket-zz/gen: bucket 'ltaug-missing-bucket-zz' does not exist" in err
    assert "Traceback" not in out.stderr and "never-read.pt" not in err
    assert time.time() - t0 < 120


def test_unreachable_endpoint_fails_fast(s3, tmp_path, monkeypatch, capsys):
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")      # nothing listens on the discard port
    s3fs.S3FileSystem.clear_instance_cache()
    t0 = time.time()
    assert _gen_job(_args(f"{s3}/gen", tmp_path)) == 2
    err = capsys.readouterr().err
    assert "cannot reach the S3 endpoint http://127.0.0.1:9" in err and "Traceback" not in err
    assert "never-read.pt" not in err and time.time() - t0 < 90


def test_missing_credentials_fail_fast(s3, tmp_path, monkeypatch, capsys):
    import s3fs

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")           # no instance role on this machine
    s3fs.S3FileSystem.clear_instance_cache()
    assert _gen_job(_args(f"{s3}/gen", tmp_path)) == 2
    err = capsys.readouterr().err
    assert "no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in err, err
    assert "Traceback" not in err and "never-read.pt" not in err


class _FlakyFS:
    """Wraps the real s3fs filesystem; the first ``fail`` PUTs fail like a dropped connection."""

    def __init__(self, fs, fail: int) -> None:
        self.fs, self.fail, self.puts = fs, fail, []

    def pipe_file(self, path, data, **kw):
        if self.fail > 0:
            self.fail -= 1
            raise ConnectionError("Connection was closed before we received a valid response (connection reset)")
        self.puts.append(path)
        return self.fs.pipe_file(path, data, **kw)

    def __getattr__(self, name):
        return getattr(self.fs, name)


def test_shard_publish_retries_transient_errors_and_counts_them(s3, monkeypatch):
    from ltaug.data.shards import iter_samples
    from ltaug.generate.shards import ShardStats, build_tar, publish_shard

    monkeypatch.setattr(storage, "BACKOFF_S", 0.01)
    real = storage.get_fs
    flaky: dict[str, _FlakyFS] = {}

    def get_fs(uri):
        fs, path = real(uri)
        if storage.is_remote(uri):
            fs = flaky.setdefault("fs", _FlakyFS(fs, fail=3))
        return fs, path

    monkeypatch.setattr(storage, "get_fs", get_fs)
    st0 = ShardStats(0, "gen-00000000-000000.tar", "00000000")
    data = build_tar([("c000-i000000", {"cls": b"0", "json": b"{}", "png": b"x"})], stats=st0)
    before = storage.retry_counter["retries"]
    t0 = time.perf_counter()
    uri = publish_shard(f"{s3}/gen", data, st0)
    assert storage.retry_counter["retries"] - before == 3                 # counted
    assert time.perf_counter() - t0 >= 0.01 + 0.02 + 0.04                 # exponential back-off
    assert [p.rsplit("/", 1)[-1] for p in flaky["fs"].puts] == ["gen-00000000-000000.tar"]   # one PUT, stats inside
    monkeypatch.setattr(storage, "get_fs", real)
    assert storage.read_bytes(uri) == data and [s["__key__"] for s in iter_samples(uri)] == ["c000-i000000"]

    # a persistent outage is not swallowed: the publish fails (and the job with it) instead of losing data
    monkeypatch.setattr(storage, "get_fs", get_fs)
    flaky["fs"] = _FlakyFS(real(f"{s3}/x")[0], fail=100)
    with pytest.raises(ConnectionError):
        publish_shard(f"{s3}/gen", data, ShardStats(1, "gen-00000000-000001.tar", "00000000"))
    monkeypatch.setattr(storage, "get_fs", real)
    assert not storage.exists(f"{s3}/gen/gen-00000000-000001.tar")
