"""Tracking: a Tracker protocol, an MLflow implementation (lazy import) and a null one."""
from __future__ import annotations

import os

from .base import NullTracker, Tracker


def default_uri(output_dir: str) -> str:
    """SQLite database inside the (local) output dir; for an s3:// output dir, ./mlflow.db."""
    from ..storage import is_remote

    base = os.path.join(os.path.expanduser("~"), ".ltaug") if is_remote(output_dir) else output_dir
    os.makedirs(base, exist_ok=True)
    return "sqlite:///" + os.path.abspath(os.path.join(base, "mlflow.db"))


def effective_uri(uri: str) -> str:
    """The tracking URI in effect: ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else '' (the embedded SQLite
    store of ``default_uri``)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI", "")


def is_local_store(uri: str) -> bool:
    """A store on this machine's disk: the embedded default (''), ``sqlite:``, ``file:`` or a plain path."""
    low = uri.lower()
    if low == "none" or low.startswith("databricks"):
        return False
    return low.startswith(("sqlite:", "file:")) or "://" not in low


def make_tracker(uri: str, output_dir: str, experiment: str, run_name: str,
                 parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> Tracker:
    """MLflow tracker for ``uri`` (``tracking.uri``; '' = ``$MLFLOW_TRACKING_URI`` when set, else SQLite in
    ``output_dir``; an ``http(s)://`` server keeps artifacts in its own artifact store); ``'none'``: NullTracker."""
    uri = effective_uri(uri)
    if uri.lower() == "none":
        return NullTracker()
    from .mlflow_tracker import MLflowTracker

    artifact_root = None
    if not uri:  # the default SQLite store keeps its artifacts beside it (MLflow would use ./mlruns of the cwd)
        from ..storage import is_remote

        artifact_root = output_dir.rstrip("/") + "/mlartifacts" if is_remote(output_dir) else \
            "file://" + os.path.abspath(os.path.join(output_dir, "mlartifacts"))
    return MLflowTracker(uri or default_uri(output_dir), experiment, run_name, parent_run_id, tags, artifact_root)


def is_runs_uri(uri: str) -> bool:
    """An MLflow ``runs:/<run id>/<artifact path>`` URI."""
    return uri.startswith("runs:/")


def download_artifact(uri: str, tracking_uri: str, output_dir: str, dst_dir: str) -> str:
    """Download the MLflow artifact ``runs:/<run id>/<path>`` (from ``tracking_uri``, default: the SQLite store
    of ``output_dir``) into the local directory ``dst_dir``; the local path of the file."""
    tracking_uri = effective_uri(tracking_uri)
    if tracking_uri.lower() == "none":
        raise ValueError(f"{uri}: a runs:/ URI needs MLflow; tracking.uri=none")
    from .mlflow_tracker import download_run_artifact

    return download_run_artifact(tracking_uri or default_uri(output_dir), uri, dst_dir)


__all__ = ["Tracker", "NullTracker", "make_tracker", "default_uri", "effective_uri", "is_local_store", "download_artifact", "is_runs_uri"]
