"""MLflow tracker: the only module that imports ``mlflow``."""
from __future__ import annotations

import math
import os
import tempfile
from typing import Any

import numpy as np

from ..storage import redact

MAX_PARAM_LEN = 6000  # MLflow param value limit (characters)


def download_run_artifact(tracking_uri: str, uri: str, dst_dir: str) -> str:
    """The local path of the artifact ``runs:/<run id>/<path>`` downloaded into ``dst_dir``."""
    from mlflow.tracking import MlflowClient

    rest = uri[len("runs:/"):].strip("/")
    run_id, _, path = rest.partition("/")
    if not run_id or not path:
        raise ValueError(f"{uri}: expected runs:/<run id>/<artifact path>")
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        client.get_run(run_id)
    except Exception as e:  # noqa: BLE001 - MlflowException (unknown run) or a store error
        raise LookupError(f"{uri}: no MLflow run {run_id} at tracking.uri={redact(tracking_uri)} "
                          f"({type(e).__name__})") from None
    os.makedirs(dst_dir, exist_ok=True)
    try:
        return client.download_artifacts(run_id, path, dst_dir)
    except Exception as e:  # noqa: BLE001 - a missing artifact
        raise LookupError(f"{uri}: artifact {path!r} not found in MLflow run {run_id} "
                          f"({type(e).__name__}: {redact(str(e))[:200]})") from None


class MLflowTracker:
    """One MLflow run (optionally nested under a parent). Params are redacted of secrets."""

    def __init__(self, uri: str, experiment: str, run_name: str, parent_run_id: str | None = None,
                 tags: dict[str, str] | None = None, artifact_root: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.artifact_root = artifact_root
        self.experiment_id = exp.experiment_id if exp else self._create_experiment(experiment)
        run_tags = dict(tags or {})
        if parent_run_id:
            run_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=run_tags)
        self.run_id: str | None = run.info.run_id
        self.last_step = 0
        self.experiment = experiment

    # Picklable: a worker process (a Ray Train rank, a Tune trial) logs into the same run through a fresh
    # client; unpickling never creates a run.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_mlflow", "client")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        self.__dict__.update(state)
        self.client = MlflowClient(tracking_uri=self.uri)

    def _create_experiment(self, name: str) -> str:
        try:
            return self.client.create_experiment(name, artifact_location=self.artifact_root)
        except Exception:  # noqa: BLE001 - a concurrent creator won the race
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, redact(str(v))[:MAX_PARAM_LEN]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric
        import time

        ts = int(time.time() * 1000)
        # no step: the last step this tracker logged (final metrics land at the end of training, not at 0)
        step = self.last_step if step is None else int(step)
        self.last_step = max(self.last_step, step)
        items = [Metric(k.replace("@", "_at_"), float(v), ts, step) for k, v in metrics.items()
                 if isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(float(v))]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i:i + 500])

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        if os.path.isdir(path):
            self.client.log_artifacts(self.run_id, path, artifact_path)
        else:
            self.client.log_artifact(self.run_id, path, artifact_path)

    def log_image(self, image: np.ndarray, name: str) -> None:
        from PIL import Image

        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, os.path.basename(name))
            Image.fromarray(image).save(p)
            self.log_artifact(p, os.path.dirname(name) or "images")

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, redact(str(v)))

    def child(self, name: str) -> "MLflowTracker":
        return MLflowTracker(self.uri, self.experiment, name, parent_run_id=self.run_id, artifact_root=self.artifact_root)

    def close(self, status: str = "FINISHED") -> None:
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)
