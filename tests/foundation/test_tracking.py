"""MLflow tracker (SQLite default inside the output dir) and the null tracker."""
from __future__ import annotations

import numpy as np

from ltaug.config import Config, flat_params
from ltaug.track import NullTracker, default_uri, make_tracker


def test_mlflow_tracker_logs_params_metrics_artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "super-secret-value-42")
    t = make_tracker("", str(tmp_path), "exp", "run-a", tags={"ltaug.job": "test"})
    params = flat_params(Config())
    params["note"] = "key is super-secret-value-42"
    t.log_params(params)
    t.log_metrics({"loss": 1.5, "acc": 0.5}, step=3)
    t.log_metrics({"loss": 1.0}, step=4)
    t.log_image(np.zeros((8, 8, 3), np.uint8), "grids/g.png")
    (tmp_path / "f.txt").write_text("x")
    t.log_artifact(str(tmp_path / "f.txt"))
    child = t.child("stage")
    child.log_metrics({"x": 1.0})
    child.close()
    t.close()
    assert (tmp_path / "mlflow.db").exists() and default_uri(str(tmp_path)).startswith("sqlite:///")
    from mlflow.tracking import MlflowClient

    c = MlflowClient(default_uri(str(tmp_path)))
    run = c.get_run(t.run_id)
    assert run.data.params["data.source"] == "digits"
    assert "super-secret" not in run.data.params["note"] and "<AWS_SECRET_ACCESS_KEY>" in run.data.params["note"]
    hist = c.get_metric_history(t.run_id, "loss")
    assert [(m.step, m.value) for m in hist] == [(3, 1.5), (4, 1.0)]
    arts = {a.path for a in c.list_artifacts(t.run_id)}
    assert {"grids", "f.txt"} <= arts
    assert c.get_run(child.run_id).data.tags["mlflow.parentRunId"] == t.run_id
    assert run.info.status == "FINISHED"


def test_null_tracker_and_none_uri(tmp_path):
    t = make_tracker("none", str(tmp_path), "e", "r")
    assert isinstance(t, NullTracker)
    t.log_metrics({"a": 1})
    t.child("x").close()


def test_default_store_keeps_artifacts_in_the_output_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    t = make_tracker("", str(out), "exp2", "run-b")
    (tmp_path / "a.txt").write_text("x")
    t.log_artifact(str(tmp_path / "a.txt"))
    t.child("c").log_artifact(str(tmp_path / "a.txt"))
    t.close()
    assert not (tmp_path / "mlruns").exists()
    assert len(list((out / "mlartifacts").rglob("a.txt"))) == 2


def test_empty_uri_honours_mlflow_tracking_uri(tmp_path, monkeypatch):
    """tracking.uri='' -> $MLFLOW_TRACKING_URI when set (no embedded store in the output dir, MLflow's own
    artifact location), else the SQLite default; an explicit tracking.uri wins over the variable."""
    import ltaug.track.mlflow_tracker as mt
    from ltaug.track import effective_uri

    opened = []

    class Recorder:   # stands in for MLflowTracker: which store would the run be opened in?
        def __init__(self, uri, experiment, run_name, parent_run_id=None, tags=None, artifact_root=None):
            opened.append((uri, artifact_root))

    monkeypatch.setattr(mt, "MLflowTracker", Recorder)
    out = tmp_path / "out"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    make_tracker("", str(out), "e", "r")
    make_tracker("sqlite:////abs/x.db", str(out), "e", "r")          # explicit wins over the variable
    assert isinstance(make_tracker("none", str(out), "e", "r"), NullTracker)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    make_tracker("", str(out), "e", "r")
    assert opened == [("http://127.0.0.1:5999", None), ("sqlite:////abs/x.db", None),
                      (default_uri(str(out)), "file://" + str(out / "mlartifacts"))]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "none")                  # the variable can switch tracking off
    assert isinstance(make_tracker("", str(out), "e", "r"), NullTracker) and effective_uri("") == "none"
