"""What every job shares: ``--config FILE [--config FILE ...] [--set k=v ...] [--dry-run] [--list-keys]``, the
launcher (chosen once, from ``resources.num_workers``), a run directory with its tracker, ``summary.json``,
and the run directory printed as the last line."""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Any, Callable, Sequence

from . import storage
from .config import Config, ConfigError, config_to_yaml, describe, load_config
from .stages import Launcher, LocalLauncher, Run, open_run, run_dir

EPILOG = """config keys (use --set KEY=VALUE, repeatable; --list-keys shows all with defaults):
  seed, data.source, data.root, data.imbalance_ratio, data.image_size, run.output_dir, tracking.uri,
  train.steps, train.batch_size, model.checkpoint, classifier.checkpoint, classifier.arch,
  classifier.method, sample.sampler, sample.steps, sample.batch_size, sample.num_per_class,
  guidance.cfg.omega, guidance.minority.scale, guidance.minority.every, generate.output_uri,
  generate.target_per_class, resources.num_workers, resources.use_gpu
resources.num_workers=0 runs in this process; >= 1 runs on Ray (starts a local Ray, or joins RAY_ADDRESS /
resources.ray_address, e.g. inside `ray job submit`).
"""

# What a user can cause and fix: bad config / data / checkpoint (ValueError and its subclasses ConfigError,
# DataError, CheckpointError, PlanConflictError), storage (OSError: StorageError, missing / unwritable files,
# a full disk), a label or key that is not there (LookupError), a file too big to hold (MemoryError).
USER_ERRORS = (ConfigError, storage.StorageError, ValueError, OSError, LookupError, MemoryError)

Body = Callable[[Config, Run, Launcher, argparse.Namespace], dict[str, Any]]


def make_launcher(cfg: Config) -> Launcher:
    """The one place a launcher is chosen: in-process for ``resources.num_workers == 0``, else Ray."""
    if cfg.resources.num_workers == 0:
        return LocalLauncher(cfg.resources)
    from .distributed import RayLauncher  # lazy: no Ray import for local runs

    return RayLauncher(cfg)


def build_parser(job: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python jobs/{job}.py", description=description, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", action="append", default=[],
                   help="YAML config (local or s3://); repeatable: later files merge over earlier ones")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override a config key, e.g. --set data.imbalance_ratio=100 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and the run directory, then exit")
    p.add_argument("--list-keys", action="store_true", help="list every config key with its default and allowed values")
    return p


def _error(e: BaseException) -> int:
    """One line on stderr naming what is wrong (the library's messages name the file, record or key)."""
    msg = storage.describe_error(e)
    print(f"error: {' '.join(storage.redact(msg).split())}", file=sys.stderr)
    if os.environ.get("LTAUG_TRACEBACK"):
        traceback.print_exc()
    return 2


def job_main(job: str, description: str, body: Body, argv: Sequence[str] | None = None,
             add_args: Callable[[argparse.ArgumentParser], None] | None = None,
             parent_run_id: str | None = None) -> int:
    """Parse args, resolve the config, run ``body(cfg, run, launcher, args)``, write ``summary.json``,
    print the run dir last."""
    parser = build_parser(job, description)
    if add_args:
        add_args(parser)
    args = parser.parse_args(argv)
    if args.list_keys:
        for key, tp, default, text in describe(Config):
            print(f"{key:38s} {tp:18s} {json.dumps(default):>14s}  {text}")
        return 0
    try:
        cfg = load_config(args.config or None, args.overrides)
    except (ConfigError, OSError) as e:
        return _error(e)
    if args.dry_run:
        print(storage.redact(config_to_yaml(cfg)), end="")
        print(f"# run directory: {storage.redact(run_dir(cfg, job))}")
        return 0
    try:
        launcher = make_launcher(cfg)
        run = open_run(cfg, job, parent_run_id)
    except USER_ERRORS as e:
        return _error(e)
    except Exception as e:  # noqa: BLE001 - storage client / tracking server errors
        if storage.is_storage_client_error(e):
            return _error(e)
        if (type(e).__module__ or "").startswith(("mlflow", "requests", "sqlalchemy")):
            return _error(RuntimeError(f"tracking.uri={storage.redact(cfg.tracking.uri) or '(default)'}: cannot "
                                       f"open the MLflow run ({type(e).__name__}: {storage.redact(str(e))[:300]}); "
                                       f"check the server, or set tracking.uri=none"))
        raise
    status = "FAILED"
    try:
        summary = body(cfg, run, launcher, args)
        summary = {"job": job, "run_dir": run.dir, "mlflow_run_id": run.tracker.run_id, **summary}
        run.write_json("summary.json", summary)
        status = "FINISHED"
    except USER_ERRORS as e:
        return _error(e)
    except Exception as e:  # noqa: BLE001 - storage client errors (no credentials, unreachable endpoint)
        if not storage.is_storage_client_error(e):
            raise
        return _error(e)
    finally:
        run.tracker.close(status)
    print(storage.redact(run.dir))
    return 0
