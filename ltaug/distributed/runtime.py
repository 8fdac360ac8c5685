"""Starting / attaching to Ray (the only place ``ray.init`` is called)."""
from __future__ import annotations

import os
from typing import Any

# Variables a local Ray cluster's workers need from the driver (endpoints; credentials stay in the env and
# are inherited by processes of a local cluster - they are never written into configs or runtime envs).
PASS_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "MLFLOW_S3_ENDPOINT_URL",
            "MLFLOW_TRACKING_URI", "LTAUG_CACHE")
WORKER_NICENESS = "0"   # of the workers of a private local Ray (Ray's default is 15)


def ensure_ray(resources: Any = None, *, dashboard: bool = False, num_cpus: float | None = None,
               object_store_memory: int | None = None) -> dict[str, Any]:
    """Connect to ``resources.ray_address`` / ``RAY_ADDRESS`` (e.g. inside ``ray job submit``), or start a
    private local Ray (``address="local"``: never attaches to a stray ``ray start`` cluster by accident).
    Returns ``ray.cluster_resources()``. A Ray already initialised in this process is reused."""
    import ray

    if not ray.is_initialized():
        address = (getattr(resources, "ray_address", "") or os.environ.get("RAY_ADDRESS", "")) or "local"
        kwargs: dict[str, Any] = {"address": address, "log_to_driver": True}
        if address == "local":
            kwargs["include_dashboard"] = dashboard
            if num_cpus is not None:
                kwargs["num_cpus"] = num_cpus
            if object_store_memory:
                kwargs["object_store_memory"] = object_store_memory
            # Ray starts workers at niceness 15 (below its own processes); on a machine Ray is private to, the
            # sampler / training workers are the work: at 15 a multi-threaded step stalls whenever a Ray system
            # process wakes up. (On a cluster the nodes' env sets it: the configs in cluster/.)
            kwargs["runtime_env"] = {"env_vars": {"RAY_worker_niceness": WORKER_NICENESS}}
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(**kwargs)
    return ray.cluster_resources()


def worker_env() -> dict[str, str]:
    """Non-secret env vars to pass to job-level runtime envs (endpoints only)."""
    return {k: os.environ[k] for k in PASS_ENV if os.environ.get(k)}
