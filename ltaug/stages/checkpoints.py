"""One way to name a checkpoint: resolved and checked once, on the driver, before any worker starts.

``model.checkpoint`` / ``classifier.checkpoint`` may be

- a ``ckpt-<step>.pt`` file (local or ``s3://``),
- a checkpoints directory (its newest *valid* checkpoint),
- a run directory (its ``checkpoints/``; a pipeline run: its ``diffusion/`` or ``baseline/`` stage),
- a ``<output_dir>/<job>-latest`` pointer (see :func:`write_latest`): the run directory it names,
- an MLflow ``runs:/<run id>/<artifact path>`` URI (downloaded through ``ltaug.track``).

:func:`resolve_checkpoints` turns each into the absolute URI of one checked ``.pt`` file of the right
kind; a wrong kind (a classifier given as ``model.checkpoint``) is an error naming the key. Absolute URIs
keep working where the working directory differs (a Ray Tune trial runs in its own directory).
"""
from __future__ import annotations

import json
import os
from typing import Any

from .. import storage
from ..config import Config, with_values
from ..track import download_artifact, is_runs_uri
from ..train.checkpoint import CheckpointError, list_checkpoints, open_checkpoint

KEYS = {"model.checkpoint": "diffusion", "classifier.checkpoint": "classifier", "loss.aid_checkpoint": "classifier"}
# where a run directory keeps a checkpoint of each kind (a stage job's own, then a pipeline's stages)
RUN_SUBDIRS = {"diffusion": ("checkpoints", "diffusion/checkpoints"),
               "classifier": ("checkpoints", "baseline/checkpoints", "augmented/checkpoints")}
LATEST_SUFFIX = "-latest"
POINTER_MAX_BYTES = 64 * 1024


def latest_pointer(output_dir: str, job: str) -> str:
    """``<output_dir>/<job>-latest``: names the newest finished run directory of ``job``."""
    return storage.join(output_dir, f"{job}{LATEST_SUFFIX}")


def write_latest(output_dir: str, job: str, run_dir: str, mlflow_run_id: str | None = None) -> str:
    """Point ``<output_dir>/<job>-latest`` at ``run_dir`` (a small JSON file, written atomically)."""
    uri = latest_pointer(output_dir, job)
    body = {"job": job, "run_dir": run_dir, "mlflow_run_id": mlflow_run_id}
    storage.write_bytes(uri, (json.dumps(body, indent=2) + "\n").encode())
    return uri


def read_pointer(uri: str) -> str:
    """The run directory a ``-latest`` pointer names (JSON ``{"run_dir": ...}`` or one line of text)."""
    text = storage.read_bytes(uri, max_bytes=POINTER_MAX_BYTES).decode("utf-8", "replace").strip()
    try:
        target = json.loads(text)["run_dir"] if text.startswith("{") else text.splitlines()[0].strip()
    except (ValueError, KeyError, TypeError, IndexError):
        raise CheckpointError(f"{uri}: not a run pointer (expected JSON with run_dir)") from None
    if not target:
        raise CheckpointError(f"{uri}: empty run pointer")
    return target


def _absolute(uri: str) -> str:
    if storage.is_remote(uri) or "://" in uri:
        return uri
    return os.path.abspath(os.path.expanduser(uri))


def _is_file(uri: str) -> bool:
    fs, path = storage.get_fs(uri)
    try:
        return fs.isfile(path)
    except OSError:
        return False


def locate(uri: str, kind: str) -> str:
    """A ``.pt`` file or checkpoints directory for ``uri`` (pointer and run directory followed)."""
    uri = _absolute(uri)
    if uri.endswith(".pt"):
        return uri
    if os.path.basename(uri.rstrip("/")).endswith(LATEST_SUFFIX) and _is_file(uri):
        uri = _absolute(read_pointer(uri))
    if not storage.exists(uri):
        raise CheckpointError(f"checkpoint not found: {uri}")
    if list_checkpoints(uri):
        return uri
    for sub in RUN_SUBDIRS[kind]:
        d = storage.join(uri, sub)
        if storage.exists(d) and list_checkpoints(d):
            return d
    return uri  # open_checkpoint reports "no valid checkpoint in this directory"


def fetch_runs_uri(cfg: Config, uri: str) -> str:
    """Download ``runs:/<id>/<path>`` into ``<run.output_dir>/downloaded/<id>/`` (uploaded there when remote)."""
    rest = uri[len("runs:/"):].strip("/")
    run_id = rest.partition("/")[0]
    out = cfg.run.output_dir
    if storage.is_remote(out):
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            local = download_artifact(uri, cfg.tracking.uri, out, d)
            dst = storage.join(out, "downloaded", run_id, os.path.basename(local))
            with open(local, "rb") as fh:
                storage.write_bytes(dst, fh.read())
            return dst
    return download_artifact(uri, cfg.tracking.uri, out, os.path.abspath(os.path.join(out, "downloaded", run_id)))


def resolve_one(cfg: Config, key: str, value: str) -> str:
    """The absolute, checked file URI ``value`` names for ``key``; errors name the key."""
    kind = KEYS[key]
    try:
        target = fetch_runs_uri(cfg, value) if is_runs_uri(value) else locate(value, kind)
        ck: dict[str, Any] = open_checkpoint(target)
    except (CheckpointError, LookupError, OSError, ValueError) as e:
        raise CheckpointError(f"{key}={value}: {storage.describe_error(e)}") from None
    if ck.get("kind") != kind:
        job = "train_diffusion" if kind == "diffusion" else "train_classifier"
        raise CheckpointError(f"{key}={value}: {ck['_uri']} is a {ck.get('kind')!r} checkpoint, not a {kind} one; "
                              f"set {key} to a {job} checkpoint")
    return _absolute(ck["_uri"])


def resolve_checkpoints(cfg: Config) -> Config:
    """``cfg`` with ``model.checkpoint`` and ``classifier.checkpoint`` as absolute URIs of checked ``.pt`` files."""
    values = {}
    for key in KEYS:
        section, field = key.split(".")
        value = getattr(getattr(cfg, section), field)
        if value:
            resolved = resolve_one(cfg, key, value)
            if resolved != value:
                values[key] = resolved
    return with_values(cfg, values) if values else cfg


__all__ = ["resolve_checkpoints", "resolve_one", "locate", "write_latest", "read_pointer", "latest_pointer"]
