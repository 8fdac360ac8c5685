"""What the connected Ray cluster can do, checked on the driver before any work (``RayLauncher.preflight``).

- ``resources.use_gpu=true`` on a cluster without ``GPU`` resources is an error naming the key (Ray would
  otherwise wait forever for a GPU that never comes).
- With more than one alive node, every location that workers or the Train controller write must be visible
  from every node: a local ``run.output_dir``, ``generate.output_uri``, ``data.cache_dir`` or a file / SQLite
  tracking store (including the embedded default) is refused, naming the key and what to use instead
  (``s3://...``, an ``http://`` MLflow tracking server), unless ``run.shared_fs=true`` declares the local paths
  a mount shared by every node.
"""
from __future__ import annotations

import os
from typing import Any

from .. import storage
from ..config import ConfigError
from ..track import effective_uri, is_local_store
from .runtime import ensure_ray


def alive_nodes() -> list[dict[str, Any]]:
    """The alive nodes of the connected Ray cluster (``ray.nodes()`` entries)."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def _address(cfg: Any) -> str:
    return cfg.resources.ray_address or os.environ.get("RAY_ADDRESS", "") or "a private local Ray"


def check_gpu(cfg: Any, resources: dict[str, float]) -> None:
    """``resources.use_gpu=true`` needs ``GPU`` resources in the cluster (``ray.cluster_resources()``)."""
    if cfg.resources.use_gpu and float(resources.get("GPU", 0.0)) <= 0:
        has = ", ".join(f"{k}={v:g}" for k, v in sorted(resources.items()) if k in ("CPU", "GPU")) or "nothing"
        raise ConfigError(f"resources.use_gpu=true but the Ray cluster ({_address(cfg)}) has no GPU resources "
                          f"(it has {has}); set resources.use_gpu=false to train on CPUs, or join a cluster "
                          f"with GPU nodes")


def check_multinode_storage(cfg: Any, n_nodes: int) -> None:
    """Refuse node-local locations on a cluster of ``n_nodes > 1`` unless ``run.shared_fs``."""
    if n_nodes <= 1 or cfg.run.shared_fs:
        return
    why = (f"the Ray cluster has {n_nodes} alive nodes and workers on the other nodes cannot see this machine's "
           f"disk")
    for key in ("run.output_dir", "generate.output_uri", "data.cache_dir"):
        section, name = key.split(".")
        uri = getattr(getattr(cfg, section), name)
        if uri and not storage.is_remote(uri):
            raise ConfigError(f"{key}={uri}: a local path, but {why}; use an s3://bucket/prefix URI, or set "
                              f"run.shared_fs=true if {uri} is a mount shared by every node")
    uri = effective_uri(cfg.tracking.uri)
    if is_local_store(uri):
        shown = uri or "(empty: the embedded SQLite store under run.output_dir)"
        raise ConfigError(f"tracking.uri={storage.redact(shown)}: a file / SQLite MLflow store, but {why}; use an "
                          f"MLflow tracking server (tracking.uri=http://host:5000 or MLFLOW_TRACKING_URI), "
                          f"tracking.uri=none, or run.shared_fs=true if the store is on a mount shared by every node")


def preflight(cfg: Any) -> dict[str, Any]:
    """Connect to Ray and check the cluster against ``cfg`` before any work; ``{"nodes", "resources"}``."""
    resources = ensure_ray(cfg.resources)
    n = len(alive_nodes())
    check_gpu(cfg, resources)
    check_multinode_storage(cfg, n)
    return {"nodes": n, "resources": resources}


__all__ = ["alive_nodes", "check_gpu", "check_multinode_storage", "preflight"]
