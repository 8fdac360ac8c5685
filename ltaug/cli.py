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
from .config import Config, ConfigError, config_to_yaml, describe, ignored_keys, load_config_sources
from .stages import Launcher, LocalLauncher, Run, open_run, run_dir
from .stages.checkpoints import resolve_checkpoints, write_latest

EPILOG = """config keys (use --set KEY=VALUE or a bare KEY=VALUE, repeatable; --list-keys shows all with defaults):
  seed, data.source, data.root, data.imbalance_ratio, data.image_size, run.output_dir, tracking.uri,
  train.steps, train.batch_size, model.checkpoint, classifier.checkpoint, classifier.arch,
  classifier.method, sample.sampler, sample.steps, sample.batch_size, sample.num_per_class,
  guidance.cfg.omega, guidance.minority.scale, guidance.minority.every, generate.output_uri,
  generate.target_per_class, resources.num_workers, resources.use_gpu
resources.num_workers=0 runs in this process; >= 1 runs on Ray (starts a local Ray, or joins RAY_ADDRESS /
resources.ray_address, e.g. inside `ray job submit`).
model.checkpoint / classifier.checkpoint: a ckpt-*.pt file, a checkpoints or run directory, a
<run.output_dir>/<job>-latest pointer, or an MLflow runs:/<run id>/checkpoints/ckpt-XXXXXXXXX.pt URI.
"""

# What a user can cause and fix: bad config / data / checkpoint (ValueError and its subclasses ConfigError,
# DataError, CheckpointError, PlanConflictError), storage (OSError: StorageError, missing / unwritable files,
# a full disk), a label or key that is not there (LookupError), a file too big to hold (MemoryError).
USER_ERRORS = (ConfigError, storage.StorageError, ValueError, OSError, LookupError, MemoryError)

Body = Callable[[Config, Run, Launcher, argparse.Namespace], dict[str, Any]]


STORAGE_KEYS = (("run.output_dir", True), ("generate.output_uri", True), ("data.root", False),
                ("data.cache_dir", True), ("model.checkpoint", False), ("classifier.checkpoint", False),
                ("classifier.synthetic_uri", False), ("pipeline.shards", False))


def check_storage(cfg: Config) -> None:
    """Every remote location the config names is reachable (endpoint, credentials, bucket; writable where a
    job writes) before any work: one clear error instead of a failure deep in a stage."""
    for key, write in STORAGE_KEYS:
        section, name = key.split(".")
        uri = getattr(getattr(cfg, section), name)
        if uri and storage.is_remote(uri):
            storage.check_access(uri, write=write)


def make_launcher(cfg: Config) -> Launcher:
    """The one place a launcher is chosen: in-process for ``resources.num_workers == 0``, else Ray."""
    if cfg.resources.num_workers == 0:
        return LocalLauncher(cfg.resources)
    from .distributed import RayLauncher  # lazy: no Ray import for local runs

    return RayLauncher(cfg)


def build_parser(job: str, description: str, prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog or f"python jobs/{job}.py", description=description, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", action="append", default=[],
                   help="YAML config (local or s3://); repeatable: later files merge over earlier ones")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                   help="override a config key, e.g. --set data.imbalance_ratio=100 (repeatable)")
    p.add_argument("assignments", metavar="KEY=VALUE", nargs="*", default=[],
                   help="config overrides like --set (applied after the --set ones), e.g. train.steps=100")
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
             parent_run_id: str | None = None, prog: str | None = None) -> int:
    """Parse args, resolve the config (the launcher's preflight, then checkpoints resolved once, here), run
    ``body(cfg, run, launcher, args)``, write ``summary.json`` and the ``<output_dir>/<job>-latest`` pointer,
    print the run dir last. A failure tags the MLflow run ``ltaug.error`` and logs its traceback."""
    parser = build_parser(job, description, prog)
    if add_args:
        add_args(parser)
    args = parser.parse_args(argv)
    if args.list_keys:
        for key, tp, default, text in describe(Config):
            print(f"{key:38s} {tp:18s} {json.dumps(default):>14s}  {text}")
        return 0
    bad = [a for a in args.assignments if "=" not in a]
    if bad:
        return _error(ConfigError(f"{bad[0]!r}: a positional argument must be KEY=VALUE (e.g. train.steps=100)"))
    try:
        given, sources = load_config_sources(args.config or None, [*args.overrides, *args.assignments])
    except (ConfigError, OSError) as e:
        return _error(e)
    for warning in ignored_keys(given, sources, job):
        print(f"warning: {warning}", file=sys.stderr)
    if args.dry_run:
        print(storage.redact(config_to_yaml(given)), end="")
        print(f"# run directory: {storage.redact(run_dir(given, job))}")
        return 0
    try:
        check_storage(given)               # endpoint, credentials and buckets first: nothing is read before
        make_launcher(given).preflight(given)  # Ray joined: cluster GPUs, multi-node storage / tracking
        cfg = resolve_checkpoints(given)   # once, on the driver, before any work; the run name keeps `given`
        launcher = make_launcher(cfg)
        run = open_run(cfg, job, parent_run_id, name_cfg=given)
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
        write_latest(cfg.run.output_dir, job, run.dir, run.tracker.run_id)
        status = "FINISHED"
    except USER_ERRORS as e:
        record_failure(run, e)
        return _error(e)
    except Exception as e:  # noqa: BLE001 - storage client errors (no credentials, unreachable endpoint)
        record_failure(run, e)
        if not storage.is_storage_client_error(e):
            raise
        return _error(e)
    except BaseException as e:  # KeyboardInterrupt: still tagged, then re-raised
        record_failure(run, e)
        raise
    finally:
        run.tracker.close(status)
    print(storage.redact(run.dir))
    return 0


def record_failure(run: Run, e: BaseException) -> None:
    """Tag the failed run ``ltaug.error`` (type and message) and log its traceback as ``error/traceback.txt``."""
    try:
        text = storage.redact("".join(traceback.format_exception(type(e), e, e.__traceback__)))
        run.tracker.set_tags({"ltaug.error": f"{type(e).__name__}: {storage.redact(str(e))}"[:4000]})
        p = run.local("error", "traceback.txt")
        with open(p, "w") as fh:
            fh.write(text)
        run.tracker.log_artifact(p, "error")
    except Exception as inner:  # noqa: BLE001 - reporting a failure must not hide it
        print(f"warning: could not record the failure in the tracker ({type(inner).__name__}: {inner})",
              file=sys.stderr)


# -- console scripts ([project.scripts]): ``ltaug-<job>`` runs the same stage through the same job_main as
# ``python jobs/<job>.py`` (which ``ray job submit`` keeps using).

def _simple(job: str, doc: str, stage: Callable[[], Callable[..., dict[str, Any]]]) -> Callable[[], int]:
    def main(argv: list[str] | None = None) -> int:
        return job_main(job, doc, lambda cfg, run, launcher, args: stage()(cfg, run, launcher), argv,
                        prog=f"ltaug-{job.replace('_', '-')}")
    main.__name__ = main.__qualname__ = f"{job}_main"
    return main


def _stages():  # lazy: a console script imports only what its job needs
    from . import stages

    return stages


inspect_data_main = _simple("inspect_data", "Class counts and histogram of the dataset as configured.",
                            lambda: _stages().inspect_data)
train_classifier_main = _simple("train_classifier", "Train and evaluate a long-tail classifier (All/Many/Medium/Few).",
                                lambda: _stages().train_classifier)
train_diffusion_main = _simple("train_diffusion", "Train the class-conditional diffusion model.",
                               lambda: _stages().train_diffusion)
evaluate_main = _simple("evaluate", "Evaluate classifier.checkpoint on the balanced test set.", lambda: _stages().evaluate)
pipeline_main = _simple("pipeline", "Everything end to end: baseline, diffusion, generation, augmented classifier, report.",
                        lambda: _stages().pipeline)


def _sample():
    from .stages.sample import sample_images

    return sample_images


def _export():
    from .stages.export import export as fn

    return fn


sample_main = _simple("sample", "Images for given classes, seeds and guidance into samples.npz + a grid.", _sample)
export_main = _simple("export", "A trained model to diffusers (UNet2DModel + DDIMScheduler) / safetensors.", _export)


def generate_main(argv: list[str] | None = None) -> int:
    from .stages import generate as gen, verify_output

    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--verify", action="store_true",
                       help="verify generate.output_uri (default: this config's run dir) against its plan and exit")

    def body(cfg, run, launcher, args) -> dict:
        log = lambda m: print(m, flush=True)  # noqa: E731
        return verify_output(cfg, run, log=log) if args.verify else gen(cfg, run, launcher, log=log)

    return job_main("generate", "Generate synthetic images into WebDataset shards (Ray Data on Ray).", body, argv,
                    add_args=add_args, prog="ltaug-generate")


def tune_main(argv: list[str] | None = None) -> int:
    from .stages import tune as run_tune

    def body(cfg, run, launcher, args) -> dict:
        out = run_tune(cfg, run, launcher)
        print(f"best {out['metric']} = {out['best_metric']:.4f} with {out['best_overrides']} "
              f"({out['num_trials']} trials, {out['errors']} errors); preset: {out['preset']}")
        return out

    return job_main("tune", "Sweep loss weights / guidance with Ray Tune (or in-process).", body, argv, prog="ltaug-tune")


SCRIPTS = {
    "ltaug-inspect-data": inspect_data_main,
    "ltaug-train-classifier": train_classifier_main,
    "ltaug-train-diffusion": train_diffusion_main,
    "ltaug-evaluate": evaluate_main,
    "ltaug-pipeline": pipeline_main,
    "ltaug-sample": sample_main,
    "ltaug-export": export_main,
    "ltaug-generate": generate_main,
    "ltaug-tune": tune_main,
}

