"""A job's run: its directory (local or ``s3://``), a local scratch directory and its tracker.

Every stage writes into a :class:`Run`; the pipeline opens one child run per stage (a sub-directory and
an MLflow run nested under the pipeline's). The run name is the job plus a digest of what it computes,
so re-submitting the same config resumes into the same directory (also on another worker count).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from .. import storage
from ..config import Config, config_to_yaml, digest, flat_params, public_dict
from ..track import NullTracker, Tracker, make_tracker

RUN_NAME_IGNORES = ("resources", "tracking", "run")  # where/how a job runs does not change what it computes


@dataclass
class Run:
    cfg: Config
    job: str
    dir: str
    local_dir: str
    tracker: Tracker = field(default_factory=NullTracker)

    def path(self, *parts: str) -> str:
        return storage.join(self.dir, *parts)

    def local(self, *parts: str) -> str:
        p = os.path.join(self.local_dir, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def publish(self, local_path: str, name: str | None = None, artifact_path: str | None = None) -> str:
        """Copy a local file into the run dir (when remote) and log it as a tracked artifact."""
        name = name or os.path.relpath(local_path, self.local_dir)
        dst = self.path(name)
        if storage.is_remote(self.dir):
            with open(local_path, "rb") as fh:
                storage.write_bytes(dst, fh.read())
        self.tracker.log_artifact(local_path, artifact_path)
        return dst

    def log_uri(self, uri: str, artifact_path: str | None = None) -> None:
        """Log the file ``uri`` (local or ``s3://``) as a tracked artifact (a remote one through a local copy):
        a final checkpoint becomes ``runs:/<run id>/checkpoints/ckpt-XXXX.pt``."""
        if not storage.is_remote(uri):
            self.tracker.log_artifact(uri, artifact_path)
            return
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, os.path.basename(uri.rstrip("/")))
            with open(p, "wb") as fh:
                fh.write(storage.read_bytes(uri))
            self.tracker.log_artifact(p, artifact_path)

    def write_json(self, name: str, obj: Any, artifact: bool = True) -> str:
        p = self.local(name)
        text = json.dumps(obj, indent=2, default=json_default)
        with open(p, "w") as fh:
            fh.write(storage.redact(text))      # credentials inside URIs never reach a written file
        return self.publish(p, name) if artifact else p

    def child(self, name: str, cfg: Config | None = None) -> "Run":
        """A child run ``<this run>/<name>`` with a tracker nested under this one (pipeline stages)."""
        local = os.path.join(self.local_dir, name)
        os.makedirs(local, exist_ok=True)
        tracker = self.tracker.child(f"{os.path.basename(self.dir.rstrip('/'))}/{name}")
        tracker.set_tags({"ltaug.job": f"{self.job}/{name}"})
        return Run(cfg=cfg or self.cfg, job=name, dir=self.path(name), local_dir=local, tracker=tracker)


def json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def run_name(cfg: Config, job: str) -> str:
    """Stable run name: the job plus a digest of what it computes, so resubmitting resumes (also on M workers)."""
    if cfg.run.name:
        return cfg.run.name
    d = {k: v for k, v in public_dict(cfg).items() if k not in RUN_NAME_IGNORES}
    d["data"] = {k: v for k, v in d["data"].items() if k != "cache_dir"}   # where data is cached changes nothing
    return f"{job}-{digest(d)}"


def run_dir(cfg: Config, job: str) -> str:
    """Where ``open_run`` puts this job's run (absolute locally): what ``--dry-run`` reports."""
    d = storage.join(cfg.run.output_dir, run_name(cfg, job))
    return d if storage.is_remote(d) else os.path.abspath(d)


def git_commit() -> str | None:
    """The commit of the git checkout ltaug runs from (None when it is installed, not checked out)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.exists(os.path.join(root, ".git")):
        return None
    try:
        out = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def open_run(cfg: Config, job: str, parent_run_id: str | None = None, tracked: bool = True,
             name_cfg: Config | None = None) -> Run:
    """Open the run of ``job``; its name (and directory) comes from ``name_cfg`` (default ``cfg``): the config
    as the user gave it, before checkpoints were resolved."""
    name = run_name(name_cfg or cfg, job)
    rdir = run_dir(name_cfg or cfg, job)
    if storage.is_remote(rdir):
        storage.check_access(rdir, write=True)
        local_dir = os.path.join(tempfile.gettempdir(), "ltaug-runs", name)
    else:
        local_dir = rdir
    try:
        os.makedirs(local_dir, exist_ok=True)
        probe = os.path.join(local_dir, f".write-probe-{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as e:
        why = ("a file is in the way" if isinstance(e, (FileExistsError, NotADirectoryError))
               else e.strerror or type(e).__name__)
        raise storage.StorageError(f"run.output_dir={cfg.run.output_dir}: cannot create or write the run directory "
                                   f"{local_dir} ({why}); choose a writable directory") from None
    tracker: Tracker = NullTracker()
    if tracked:
        tags = {"ltaug.job": job}
        commit = git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        tracker = make_tracker(cfg.tracking.uri, cfg.run.output_dir, cfg.tracking.experiment, name,
                               parent_run_id, tags=tags)
        tracker.log_params(flat_params(cfg))
    run = Run(cfg=cfg, job=job, dir=rdir, local_dir=local_dir, tracker=tracker)
    p = run.local("config.yaml")
    with open(p, "w") as fh:
        fh.write(config_to_yaml(cfg))
    run.publish(p, "config.yaml")
    return run


__all__ = ["Run", "open_run", "git_commit", "run_name", "run_dir", "json_default", "RUN_NAME_IGNORES"]
