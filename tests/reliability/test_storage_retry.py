"""Transient storage errors are retried with back-off and counted; permanent ones are not retried."""
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


def test_gives_up_after_retries(monkeypatch):
    monkeypatch.setattr(storage, "BACKOFF_S", 0.001)

    def down():
        raise TimeoutError("timed out")

    with pytest.raises(TimeoutError):
        storage.with_retry(down, "read z", retries=3)


def test_redact_hides_secrets(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "abcd1234secret")
    assert "abcd1234secret" not in storage.redact("key=abcd1234secret and http://u:pw@host/x")
    assert "pw@" not in storage.redact("http://u:pw@host/x")
