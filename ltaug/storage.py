"""URI -> filesystem. Local paths and ``s3://`` URIs behave the same everywhere in ltaug.

S3 settings come only from the standard AWS environment variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` /
``AWS_DEFAULT_REGION``, ``AWS_RETRY_MODE``, ``AWS_MAX_ATTEMPTS``); they are never copied into configs,
logs or MLflow params.

Retries of S3 calls are botocore's own (s3fs passes ``config_kwargs`` to ``botocore.config.Config``):
``adaptive`` mode by default (exponential back-off with jitter on throttling, 5xx, timeouts and dropped
connections, plus client-side rate limiting), ``AWS_MAX_ATTEMPTS`` attempts (default
:data:`S3_MAX_ATTEMPTS`); ``AWS_RETRY_MODE`` picks ``standard`` or ``legacy`` instead. What still escapes
the client is retried here only when its *type* says it is transient (:data:`TRANSIENT_ERRORS`: a dropped
connection or a timeout, e.g. from a local network filesystem or a wrapped client), never by matching
message text; client errors (credentials, endpoint, access, missing bucket) fail at once.
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
RETRIES = 4          # attempts of :func:`with_retry` for an error of a transient type
BACKOFF_S = 0.25     # first back-off delay, doubled each retry
S3_RETRY_MODE = "adaptive"   # botocore retry mode unless AWS_RETRY_MODE says otherwise
S3_MAX_ATTEMPTS = 6          # botocore attempts (first call included) unless AWS_MAX_ATTEMPTS says otherwise
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)   # by type, not message

retry_counter = {"retries": 0}


MAX_READ_BYTES = int(os.environ.get("LTAUG_MAX_READ_BYTES", 8 << 30))  # default cap on one file read whole


class StorageError(OSError):
    """A storage problem stated for a person: which URI, what is wrong, what to check."""


class InputTooLargeError(StorageError, ValueError):
    """A file (or its decoded form) is larger than the cap that applies to it."""


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
    opts["config_kwargs"] = {"retries": s3_retry_config()}
    return opts


def s3_retry_config() -> dict[str, Any]:
    """botocore's ``retries`` setting (``total_max_attempts`` counts the first call, like ``AWS_MAX_ATTEMPTS``):
    mode from ``AWS_RETRY_MODE`` (default adaptive), attempts from
    ``AWS_MAX_ATTEMPTS`` (default :data:`S3_MAX_ATTEMPTS`); a bad value is an error naming the variable."""
    mode = os.environ.get("AWS_RETRY_MODE") or S3_RETRY_MODE
    if mode not in ("adaptive", "standard", "legacy"):
        raise StorageError(f"AWS_RETRY_MODE={mode!r}: expected adaptive, standard or legacy")
    raw = os.environ.get("AWS_MAX_ATTEMPTS")
    try:
        attempts = int(raw) if raw else S3_MAX_ATTEMPTS
    except ValueError:
        raise StorageError(f"AWS_MAX_ATTEMPTS={raw!r}: expected an integer >= 1") from None
    if attempts < 1:
        raise StorageError(f"AWS_MAX_ATTEMPTS={raw!r}: expected an integer >= 1")
    return {"mode": mode, "total_max_attempts": attempts}   # botocore's "max_attempts" would count retries only


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
        # pyarrow has no adaptive mode: the standard strategy with the same attempt count
        kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(
            max_attempts=s3_retry_config()["total_max_attempts"])
        return pafs.S3FileSystem(**kwargs), strip_scheme(uri)
    fs, path = get_fs(uri)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def with_retry(fn: Callable[[], T], what: str, retries: int = RETRIES) -> T:
    """Run ``fn``; retry (exponential back-off) only errors whose type says they are transient
    (:data:`TRANSIENT_ERRORS`), counted in ``retry_counter``. S3 calls were already retried by botocore
    (:func:`s3_retry_config`), so an S3 client error that reaches here is final: it becomes a
    :class:`StorageError` naming ``what``. Missing files, permissions and the like are raised at once."""
    delay = BACKOFF_S
    for attempt in range(retries):
        try:
            return fn()
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError):
            raise
        except TRANSIENT_ERRORS:
            if attempt == retries - 1:
                raise
            retry_counter["retries"] += 1
            time.sleep(delay)
            delay *= 2
        except Exception as e:  # noqa: BLE001 - S3 client errors become a StorageError naming what was done
            if not is_storage_client_error(e):
                raise
            raise StorageError(f"{what}: {describe_error(e)}") from None
    raise AssertionError("unreachable")


@contextlib.contextmanager
def open_uri(uri: str, mode: str = "rb") -> Iterator[IO]:
    fs, path = get_fs(uri)
    if "w" in mode and not is_remote(uri):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with fs.open(path, mode) as fh:
        yield fh


def _local_regular(path: str, uri: str, max_bytes: int | None) -> int:
    """Size of local ``path``; refuses what is not a regular file (a directory, a device, a FIFO) or is too big."""
    import stat as _stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: file not found") from None
    except NotADirectoryError:
        raise FileNotFoundError(f"{uri}: file not found (a parent is not a directory)") from None
    if _stat.S_ISDIR(st.st_mode):
        raise StorageError(f"{uri}: is a directory, expected a file")
    if not _stat.S_ISREG(st.st_mode):
        raise StorageError(f"{uri}: not a regular file (a device, FIFO or socket); refusing to read it")
    cap = MAX_READ_BYTES if max_bytes is None else max_bytes
    if st.st_size > cap:
        raise InputTooLargeError(f"{uri}: {st.st_size} bytes, more than the {cap}-byte limit for this file")
    return st.st_size


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """The whole of ``uri``; only regular files, at most ``max_bytes`` (default :data:`MAX_READ_BYTES`)."""
    fs, path = get_fs(uri)
    cap = MAX_READ_BYTES if max_bytes is None else max_bytes
    if not is_remote(uri):
        _local_regular(path, uri, cap)
        with open(path, "rb") as fh:
            data = fh.read(cap + 1)       # a file that grew since the stat is still capped
    else:
        if max_bytes is not None:
            info = with_retry(lambda: fs.info(path), f"stat {uri}")
            if info.get("type") == "directory":
                raise StorageError(f"{uri}: is a directory (prefix), expected an object")
            if int(info.get("size") or 0) > cap:
                raise InputTooLargeError(f"{uri}: {info.get('size')} bytes, more than the {cap}-byte limit "
                                         f"for this file")
        data = with_retry(lambda: fs.cat_file(path), f"read {uri}")
    if len(data) > cap:
        raise InputTooLargeError(f"{uri}: more than the {cap}-byte limit for this file")
    return data


def read_range(uri: str, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of ``uri`` (one ranged GET on S3); shorter when the file ends before ``end``."""
    fs, path = get_fs(uri)
    if not is_remote(uri):
        _local_regular(path, uri, None)
        with open(path, "rb") as fh:
            fh.seek(start)
            return fh.read(max(0, end - start))
    return with_retry(lambda: fs.cat_file(path, start=start, end=end), f"read {uri}")


def _write_error(uri: str, e: OSError) -> StorageError:
    import errno

    if isinstance(e, StorageError):
        return e
    if e.errno == errno.ENOSPC:
        why = "no space left on the device; free space or write elsewhere"
    elif e.errno == errno.EDQUOT:
        why = "disk quota exceeded"
    elif isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "permission denied (read-only or not writable by this user); choose a writable location"
    elif isinstance(e, (NotADirectoryError, FileExistsError)) or e.errno in (errno.ENOTDIR, errno.EEXIST):
        why = "a parent of this path is a file, not a directory; choose another location"
    elif isinstance(e, IsADirectoryError):
        why = "a directory exists where the file should go"
    else:
        why = f"{type(e).__name__}: {redact(str(e))}"
    return StorageError(f"cannot write {uri}: {why}")


def _local_makedirs(uri: str, path: str) -> None:
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    except OSError as e:
        raise _write_error(uri, e) from None


def _write_tmp(uri: str, path: str, data: bytes) -> str:
    """Write ``data`` to a fresh temp file beside ``path`` (fsynced); on any failure it is removed."""
    _local_makedirs(uri, path)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with _removed_on_failure(uri, tmp):
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return tmp


@contextlib.contextmanager
def _removed_on_failure(uri: str, tmp: str):
    """Remove the temp file ``tmp`` when the block fails (a full disk, a signal); OS errors become a
    :class:`StorageError` naming ``uri``."""
    try:
        yield
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _write_error(uri, e) from None
        raise


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` atomically: readers see the old object or the whole new one.

    Locally a temp file beside the target is renamed over it; the temp file is removed on every failure
    (a full disk, a signal). Errors are :class:`StorageError` naming ``uri`` and what to do."""
    fs, path = get_fs(uri)
    if is_remote(uri):  # an S3 PUT is atomic per object
        with_retry(lambda: fs.pipe_file(path, data), f"write {uri}")
        return
    tmp = _write_tmp(uri, path, data)
    with _removed_on_failure(uri, tmp):
        os.replace(tmp, path)


def create_exclusive(uri: str, data: bytes) -> bool:
    """Create ``uri`` with ``data`` only if it does not exist yet, atomically; False when it already existed.

    Locally: a complete temp file hard-linked to the target (``link`` fails when the target exists, so two
    creators can never both win and a reader never sees a partial file). On S3: a conditional PUT
    (``If-None-Match: *``; HTTP 412 when the key exists)."""
    fs, path = get_fs(uri)
    if is_remote(uri):
        try:
            with_retry(lambda: fs.pipe_file(path, data, mode="create"), f"create {uri}")
        except FileExistsError:
            return False
        except OSError as e:
            if _precondition_failed(e):
                return False
            raise
        return True
    tmp = _write_tmp(uri, path, data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno in (1, 38, 95):   # EPERM / ENOSYS / EOPNOTSUPP: no hard links here; exclusive open instead
            try:
                with open(path, "xb") as fh:
                    fh.write(data)
                return True
            except FileExistsError:
                return False
            except OSError as e2:
                raise _write_error(uri, e2) from None
        raise _write_error(uri, e) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _precondition_failed(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e} {getattr(e, '__cause__', '')}".lower()
    return "precondition" in text or "412" in text


def remove(uri: str) -> None:
    """Delete ``uri`` (a file / object); a missing one is fine."""
    fs, path = get_fs(uri)
    with contextlib.suppress(FileNotFoundError):
        with_retry(lambda: fs.rm_file(path), f"delete {uri}")


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def exists(uri: str) -> bool:
    fs, path = get_fs(uri)
    return bool(with_retry(lambda: fs.exists(path), f"stat {uri}"))


def makedirs(uri: str) -> None:
    fs, path = get_fs(uri)
    if not is_remote(uri):
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise _write_error(uri, e) from None


def listdir(uri: str, suffix: str = "") -> list[str]:
    """Sorted full URIs of the files directly under ``uri`` (optionally ending in ``suffix``)."""
    fs, path = get_fs(uri)
    if not with_retry(lambda: fs.exists(path), f"stat {uri}"):
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
    return sorted(_restore_scheme(uri, p) for p in with_retry(lambda: fs.glob(path), f"list {uri}"))


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
        fs.invalidate_cache(bucket)     # a probe: leave no listing cached that a later write would make stale
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


_URI_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^/@\s?#]*:)?([^/\s?#]+)@")
_QUERY_SECRET = re.compile(r"(?i)([?&;](?:[a-z0-9_\-]*(?:password|passwd|pwd|secret|token|signature|"
                           r"credential|api[_\-]?key|access[_\-]?key|sig)[a-z0-9_\-]*)=)[^&;#\s'\"]+")


def redact(text: str) -> str:
    """``text`` with the values of secret environment variables, the credentials inside any URI
    (``scheme://user:password@host``, ``scheme://token@host``) and secret-looking query parameters
    (``?password=``, ``&token=``, ``X-Amz-Signature=``...) replaced."""
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, f"<{name}>")

    def userinfo(m: re.Match) -> str:
        return f"{m.group(1)}{m.group(2) or ''}***@" if m.group(2) else f"{m.group(1)}***@"

    text = _URI_USERINFO.sub(userinfo, text)
    return _QUERY_SECRET.sub(r"\1***", text)


def redact_obj(obj: Any) -> Any:
    """:func:`redact` applied to every string inside nested dicts / lists / tuples (keys kept)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_obj(v) for v in obj) if isinstance(obj, list) else tuple(redact_obj(v) for v in obj)
    return obj


def is_storage_client_error(e: BaseException) -> bool:
    """An error of the S3 client stack (botocore / aiobotocore / aiohttp): credentials, endpoint, access."""
    mod = type(e).__module__ or ""
    return mod.startswith(("botocore", "aiobotocore", "aiohttp", "s3fs", "urllib3"))


def describe_error(e: BaseException) -> str:
    """A one-line message for a user error: the library's own message, or for a storage client / OS error
    what it means and what to check (endpoint and credentials come from the AWS_* variables)."""
    name = type(e).__name__
    text = str(e)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "the AWS default"
    if isinstance(e, (StorageError, ValueError)):     # the library's own messages already say it all
        return text or name
    if is_storage_client_error(e):
        low = f"{name} {text}".lower()
        if "credential" in low:
            return (f"S3: no AWS credentials found ({name}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                    f"(or an instance role) for endpoint {endpoint}")
        if "connect" in low or "endpoint" in low or "timeout" in low:
            return f"S3: cannot reach endpoint {endpoint} ({name}: {text}); check AWS_ENDPOINT_URL and the network"
        return f"S3 ({endpoint}): {name}: {text}"
    if isinstance(e, OSError) and not isinstance(e, StorageError) and e.strerror and e.filename:
        return f"{e.filename}: {e.strerror}"
    if isinstance(e, MemoryError):
        return f"out of memory ({text or 'an input is too large to hold'}); reduce the input or the batch size"
    if isinstance(e, KeyError):
        return f"missing key {text} ({name})"
    return text or name


def local_cache_dir() -> str:
    d = os.environ.get("LTAUG_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ltaug"))
    os.makedirs(d, exist_ok=True)
    return d


def bytes_io(uri: str) -> io.BytesIO:
    return io.BytesIO(read_bytes(uri))


def load_json(data: bytes | str, where: str) -> Any:
    """Parse JSON strictly: a repeated key in an object (which ``json`` would silently resolve to the last
    value) or malformed text is a ``ValueError`` naming ``where``."""
    import json

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise ValueError(f"{where}: repeated key {k!r} in a JSON object; each key may appear once")
            out[k] = v
        return out

    try:
        return json.loads(data, object_pairs_hook=pairs)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{where}: not valid JSON ({type(e).__name__}: {e})") from None
