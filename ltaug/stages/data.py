"""The dataset every stage, worker and trial reads: the cached artifact of the configured data section."""
from __future__ import annotations

from .. import storage
from ..config import Config
from ..data import LTDataset
from ..data.artifact import load_data, open_artifact


def cache_root(cfg: Config) -> str:
    """``data.cache_dir``, or ``<run.output_dir>/datasets``."""
    return cfg.data.cache_dir or storage.join(cfg.run.output_dir, "datasets")


def stage_data(cfg: Config) -> tuple[LTDataset, str]:
    """(dataset, artifact URI): decoded once per data-config digest, memory-mapped afterwards."""
    return load_data(cfg.data, cache_root(cfg))


def worker_data(uri: str) -> LTDataset:
    """What a worker reads: the artifact its task names (never the source)."""
    return open_artifact(uri)


__all__ = ["stage_data", "worker_data", "cache_root"]
