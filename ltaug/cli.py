"""What every job shares: ``--config FILE [--set k=v ...] [--dry-run]``, a run directory, a tracker,
``summary.json``, and the run directory printed as the last line."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from . import storage
from .config import (Config, ConfigError, config_to_yaml, describe, digest, flat_params, load_config,
                     public_dict)
from .track import NullTracker, Tracker, make_tracker

EPILOG = """config keys (use --set KEY=VALUE, repeatable; --list-keys shows all with defaults):
  seed, data.source, data.root, data.imbalance_ratio, data.image_size, run.output_dir, tracking.uri,
  train.steps, train.batch_size, model.checkpoint, classifier.checkpoint, classifier.arch,
  classifier.method, sample.sampler, sample.steps, sample.batch_size, sample.num_per_class,
  guidance.cfg.omega, guidance.minority.scale, guidance.minority.every, generate.output_uri,
  generate.target_per_class, resources.num_workers, resources.use_gpu
"""


@dataclass
class Run:
    """A job's run: its directory (local or s3://), a local scratch dir, and its tracker."""

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
        """Copy a local file into the run dir (when remote) and log it as an MLflow artifact."""
        name = name or os.path.relpath(local_path, self.local_dir)
        dst = self.path(name)
        if storage.is_remote(self.dir):
            with open(local_path, "rb") as fh:
                storage.write_bytes(dst, fh.read())
        self.tracker.log_artifact(local_path, artifact_path)
        return dst

    def write_json(self, name: str, obj: Any, artifact: bool = True) -> str:
        p = self.local(name)
        with open(p, "w") as fh:
            json.dump(obj, fh, indent=2, default=_json_default)
        return self.publish(p, name) if artifact else p


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


RUN_NAME_IGNORES = ("resources", "tracking", "run")  # where/how a job runs does not change what it computes


def run_name(cfg: Config, job: str) -> str:
    """Stable run name: the job plus a digest of what it computes, so resubmitting resumes (also on M workers)."""
    if cfg.run.name:
        return cfg.run.name
    d = {k: v for k, v in public_dict(cfg).items() if k not in RUN_NAME_IGNORES}
    return f"{job}-{digest(d)}"


def open_run(cfg: Config, job: str, parent_run_id: str | None = None, tracked: bool = True) -> Run:
    name = run_name(cfg, job)
    run_dir = storage.join(cfg.run.output_dir, name)
    if storage.is_remote(run_dir):
        storage.check_access(run_dir, write=True)
        local_dir = os.path.join(tempfile.gettempdir(), "ltaug-runs", name)
    else:
        local_dir = os.path.abspath(run_dir)
        run_dir = local_dir
    os.makedirs(local_dir, exist_ok=True)
    tracker: Tracker = NullTracker()
    if tracked:
        tracker = make_tracker(cfg.tracking.uri, cfg.run.output_dir, cfg.tracking.experiment, name,
                               parent_run_id, tags={"ltaug.job": job})
        tracker.log_params(flat_params(cfg))
    run = Run(cfg=cfg, job=job, dir=run_dir, local_dir=local_dir, tracker=tracker)
    p = run.local("config.yaml")
    with open(p, "w") as fh:
        fh.write(config_to_yaml(cfg))
    run.publish(p, "config.yaml")
    return run


def build_parser(job: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python jobs/{job}.py", description=description, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="YAML config (local or s3://); defaults for every key omitted")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override a config key, e.g. --set data.imbalance_ratio=100 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--list-keys", action="store_true", help="list every config key with its default and allowed values")
    return p


def job_main(job: str, description: str, body: Callable[[Config, Run, argparse.Namespace], dict[str, Any]],
             argv: Sequence[str] | None = None,
             add_args: Callable[[argparse.ArgumentParser], None] | None = None,
             parent_run_id: str | None = None) -> int:
    """Parse args, resolve the config, run ``body``, write ``summary.json``, print the run dir last."""
    parser = build_parser(job, description)
    if add_args:
        add_args(parser)
    args = parser.parse_args(argv)
    if args.list_keys:
        for key, tp, default, text in describe(Config):
            print(f"{key:38s} {tp:18s} {json.dumps(default):>14s}  {text}")
        return 0
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(config_to_yaml(cfg), end="")
        return 0
    try:
        run = open_run(cfg, job, parent_run_id)
    except (storage.StorageError, ConfigError) as e:
        print(f"error: {storage.redact(str(e))}", file=sys.stderr)
        return 2
    status = "FAILED"
    try:
        summary = body(cfg, run, args)
        summary = {"job": job, "run_dir": run.dir, "mlflow_run_id": run.tracker.run_id, **summary}
        run.write_json("summary.json", summary)
        status = "FINISHED"
    except (ConfigError, storage.StorageError, ValueError, FileNotFoundError) as e:
        print(f"error: {storage.redact(str(e))}", file=sys.stderr)
        if os.environ.get("LTAUG_TRACEBACK"):
            traceback.print_exc()
        return 2
    finally:
        run.tracker.close(status)
    print(run.dir)
    return 0
