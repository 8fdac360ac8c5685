"""Tracker protocol: params, metrics with steps, artifacts, images. Jobs log through it; the core never does."""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None: ...

    def log_image(self, image: np.ndarray, name: str) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def child(self, name: str) -> "Tracker": ...

    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Does nothing; used when tracking is off and on non-zero ranks."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        pass

    def log_image(self, image: np.ndarray, name: str) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def child(self, name: str) -> "NullTracker":
        return NullTracker()

    def close(self, status: str = "FINISHED") -> None:
        pass
