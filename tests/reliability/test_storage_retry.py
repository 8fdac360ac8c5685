"""Retries: S3 calls are retried by botocore (adaptive mode, attempts from AWS_MAX_ATTEMPTS), configured by
``storage.s3_options``; what escapes the client is retried by ``with_retry`` only when its *type* is transient
(counted, with back-off); permanent errors are never retried, whatever their message says."""
from __future__ import annotations

import pytest

from ltaug import storage


def test_transient_errors_retried_and_counted(monkeypatch):
    monkeypatch.setattr(storage, "BACKOFF_S", 0.001)
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError("connection reset by peer")
        return "ok"

    before = storage.retry_counter["retries"]
    assert storage.with_retry(flaky, "read x") == "ok"
    assert calls["n"] == 3 and storage.retry_counter["retries"] - before == 2


def test_permanent_errors_not_retried(monkeypatch):
    calls = {"n": 0}

    def missing():
        calls["n"] += 1
        raise FileNotFoundError("nope")

    with pytest.raises(FileNotFoundError):
        storage.with_retry(missing, "read y")
    assert calls["n"] == 1


def test_the_type_decides_never_the_message(monkeypatch):
    monkeypatch.setattr(storage, "BACKOFF_S", 0.001)
    calls = {"n": 0}

    def worded_like_a_timeout():      # an OSError whose text looks transient is still not retried
        calls["n"] += 1
        raise OSError("connection timed out (503 SlowDown)")

    with pytest.raises(OSError):
        storage.with_retry(worded_like_a_timeout, "read w")
    assert calls["n"] == 1


def test_gives_up_after_retries(monkeypatch):
    monkeypatch.setattr(storage, "BACKOFF_S", 0.001)
    calls = {"n": 0}

    def down():
        calls["n"] += 1
        raise TimeoutError("timed out")

    with pytest.raises(TimeoutError):
        storage.with_retry(down, "read z", retries=3)
    assert calls["n"] == 3


def test_s3_retry_config_from_env(monkeypatch):
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    assert storage.s3_options()["config_kwargs"]["retries"] == {"mode": "adaptive",
                                                               "total_max_attempts": storage.S3_MAX_ATTEMPTS}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "9")
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    assert storage.s3_retry_config() == {"mode": "standard", "total_max_attempts": 9}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "many")
    with pytest.raises(storage.StorageError, match="AWS_MAX_ATTEMPTS"):
        storage.s3_options()
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("AWS_RETRY_MODE", "sometimes")
    with pytest.raises(storage.StorageError, match="AWS_RETRY_MODE"):
        storage.s3_options()


@pytest.mark.s3
def test_botocore_retries_dropped_connections_on_s3(s3, monkeypatch):
    """A PUT whose first attempts lose the connection succeeds through botocore's own retries (the injected
    errors come from botocore's send hook, below s3fs); ltaug's loop is not involved."""
    import s3fs
    from botocore.exceptions import ConnectionClosedError

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "5")
    s3fs.S3FileSystem.clear_instance_cache()
    fs, path = storage.get_fs(f"{s3}/x/a.bin")
    fs.connect()
    client = fs.s3
    assert client.meta.config.retries["mode"] == "adaptive"
    assert client.meta.config.retries["total_max_attempts"] == 5
    calls = {"n": 0}

    def drop(request, **kw):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionClosedError(endpoint_url=request.url)

    client.meta.events.register("before-send.s3.PutObject", drop)
    before = storage.retry_counter["retries"]
    storage.write_bytes(f"{s3}/x/a.bin", b"payload")
    client.meta.events.unregister("before-send.s3.PutObject", drop)
    assert calls["n"] == 3                                             # 2 dropped + 1 that went through
    assert storage.retry_counter["retries"] == before                  # botocore did it, not with_retry
    assert storage.read_bytes(f"{s3}/x/a.bin") == b"payload"


def test_redact_hides_secrets(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "abcd1234secret")
    assert "abcd1234secret" not in storage.redact("key=abcd1234secret and http://u:pw@host/x")
    assert "pw@" not in storage.redact("http://u:pw@host/x")
