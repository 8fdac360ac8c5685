"""URI -> filesystem. Local paths and ``s3://`` URIs behave the same everywhere in ltaug.

S3 settings come only from the standard AWS environment variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` /
``AWS_DEFAULT_REGION``); they are never copied into configs, logs or MLflow params.
"""
from __future__ import annotations

import contextlib
import io
import os
import posixpath
import re
import time
import uuid
from typing import IO, Any, Callable, Iterator, TypeVar
from urllib.parse import urlparse

import fsspec

T = TypeVar("T")

SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
              "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
RETRIES = 4          # attempts for a transient storage error
BACKOFF_S = 0.25     # first back-off delay, doubled each retry

retry_counter = {"retries": 0}


class StorageError(OSError):
    """A storage problem stated for a person: which URI, what is wrong, what to check."""


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def scheme(uri: str) -> str:
    return urlparse(uri).scheme if "://" in uri else "file"


def strip_scheme(uri: str) -> str:
    if uri.startswith("file://"):
        return uri[len("file://"):]
    return uri.split("://", 1)[1] if "://" in uri else uri


def s3_options() -> dict[str, Any]:
    """s3fs keyword arguments built from the standard AWS environment variables only."""
    opts: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client_kwargs: dict[str, Any] = {}
    if endpoint:
        opts["endpoint_url"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        client_kwargs["region_name"] = region
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    return opts


def get_fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it."""
    sch = scheme(uri)
    if sch == "file":
        return fsspec.filesystem("file"), os.path.abspath(strip_scheme(uri))
    if sch in ("s3", "s3a"):
        fs = fsspec.filesystem("s3", **s3_options())
        return fs, strip_scheme(uri)
    return fsspec.filesystem(sch), strip_scheme(uri)


def pyarrow_fs(uri: str):
    """A ``pyarrow.fs.FileSystem`` and path for ``uri``; the S3 endpoint is passed explicitly."""
    import pyarrow.fs as pafs

    if scheme(uri) == "file":
        return pafs.LocalFileSystem(), os.path.abspath(strip_scheme(uri))
    if scheme(uri) in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kwargs: dict[str, Any] = {}
        if endpoint:
            p = urlparse(endpoint)
            kwargs["endpoint_override"] = p.netloc or p.path
            kwargs["scheme"] = p.scheme or "https"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), strip_scheme(uri)
    fs, path = get_fs(uri)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def with_retry(fn: Callable[[], T], what: str, retries: int = RETRIES) -> T:
    """Run ``fn`` retrying transient errors (connection, throttling) with exponential back-off."""
    delay = BACKOFF_S
    for attempt in range(retries):
        try:
            return fn()
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError):
            raise
        except (ConnectionError, TimeoutError, OSError) as e:
            if attempt == retries - 1 or not _transient(e):
                raise
            retry_counter["retries"] += 1
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _transient(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(w in text for w in ("timeout", "timed out", "connection", "throttl", "slowdown",
                                   "503", "500", "reset", "temporar"))


@contextlib.contextmanager
def open_uri(uri: str, mode: str = "rb") -> Iterator[IO]:
    fs, path = get_fs(uri)
    if "w" in mode and not is_remote(uri):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with fs.open(path, mode) as fh:
        yield fh


def read_bytes(uri: str) -> bytes:
    fs, path = get_fs(uri)
    return with_retry(lambda: fs.cat_file(path), f"read {uri}")


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` atomically: readers see the old object or the whole new one."""
    fs, path = get_fs(uri)
    if is_remote(uri):  # an S3 PUT is atomic per object
        with_retry(lambda: fs.pipe_file(path, data), f"write {uri}")
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def exists(uri: str) -> bool:
    fs, path = get_fs(uri)
    return bool(with_retry(lambda: fs.exists(path), f"stat {uri}"))


def makedirs(uri: str) -> None:
    fs, path = get_fs(uri)
    if not is_remote(uri):
        os.makedirs(path, exist_ok=True)


def listdir(uri: str, suffix: str = "") -> list[str]:
    """Sorted full URIs of the files directly under ``uri`` (optionally ending in ``suffix``)."""
    fs, path = get_fs(uri)
    if not fs.exists(path):
        return []
    entries = with_retry(lambda: fs.ls(path, detail=True), f"list {uri}")
    out = []
    for e in entries:
        if e.get("type") == "directory":
            continue
        name = e["name"].rstrip("/")
        if suffix and not name.endswith(suffix):
            continue
        out.append(_restore_scheme(uri, name))
    return sorted(out)


def glob(uri: str) -> list[str]:
    fs, path = get_fs(uri)
    return sorted(_restore_scheme(uri, p) for p in fs.glob(path))


def _restore_scheme(like: str, path: str) -> str:
    if is_remote(like):
        return f"{scheme(like)}://{path}"
    return path


def copy_to_local(uri: str, local_dir: str) -> str:
    """Return a local path holding ``uri`` (downloading it when remote)."""
    if not is_remote(uri):
        return strip_scheme(uri)
    os.makedirs(local_dir, exist_ok=True)
    dst = os.path.join(local_dir, posixpath.basename(strip_scheme(uri)))
    write_bytes(dst, read_bytes(uri))
    return dst


def check_access(uri: str, write: bool = False) -> None:
    """Fail fast, before heavy work, when ``uri`` cannot be reached (endpoint, credentials, bucket)."""
    if not is_remote(uri):
        return
    fs, path = get_fs(uri)
    bucket = path.split("/", 1)[0]
    try:
        fs.ls(bucket, refresh=True)
    except FileNotFoundError:
        raise StorageError(f"{uri}: bucket {bucket!r} does not exist (endpoint "
                           f"{os.environ.get('AWS_ENDPOINT_URL', 'AWS default')})") from None
    except PermissionError as e:
        raise StorageError(f"{uri}: access denied to bucket {bucket!r}; check AWS_ACCESS_KEY_ID / "
                           f"AWS_SECRET_ACCESS_KEY ({type(e).__name__})") from None
    except Exception as e:  # noqa: BLE001 - turned into a clear message
        msg = redact(str(e))
        if "credential" in msg.lower():
            raise StorageError(f"{uri}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
                               f"AWS_SECRET_ACCESS_KEY (or an instance role)") from None
        raise StorageError(f"{uri}: cannot reach the S3 endpoint "
                           f"{os.environ.get('AWS_ENDPOINT_URL', '(AWS default)')}: {type(e).__name__}: {msg}") from None
    if write:
        probe = f"{path.rstrip('/')}/.ltaug-write-probe-{uuid.uuid4().hex[:8]}"
        try:
            fs.pipe_file(probe, b"")
            fs.rm_file(probe)
        except Exception as e:  # noqa: BLE001
            raise StorageError(f"{uri}: cannot write ({type(e).__name__}: {redact(str(e))})") from None


def redact(text: str) -> str:
    """Replace the values of secret environment variables (and URL passwords) in ``text``."""
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, f"<{name}>")
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)


def local_cache_dir() -> str:
    d = os.environ.get("LTAUG_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ltaug"))
    os.makedirs(d, exist_ok=True)
    return d


def bytes_io(uri: str) -> io.BytesIO:
    return io.BytesIO(read_bytes(uri))
