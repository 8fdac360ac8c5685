"""Stage: export trained models so they leave ltaug.

``model.checkpoint`` -> ``<run>/diffusers/`` (a diffusers ``UNet2DModel`` + ``DDIMScheduler``, safetensors;
see :mod:`ltaug.diffusion.export`); ``classifier.checkpoint`` -> ``<run>/classifier/`` (safetensors + JSON;
:func:`ltaug.classify.export.load_exported_classifier`). Both are written locally, then copied into the run
directory when it is remote, and logged as MLflow artifacts.
"""
from __future__ import annotations

import os
from typing import Any

from .. import storage
from ..config import Config
from .launcher import Launcher
from .run import Run


def _publish_dir(run: Run, local_dir: str, name: str) -> str:
    for root, _, files in os.walk(local_dir):
        for f in files:
            p = os.path.join(root, f)
            rel = os.path.relpath(p, run.local_dir)
            if storage.is_remote(run.dir):
                with open(p, "rb") as fh:
                    storage.write_bytes(run.path(rel), fh.read())
    run.tracker.log_artifact(local_dir, name)
    return run.path(name)


def export(cfg: Config, run: Run, launcher: Launcher) -> dict[str, Any]:
    """summary: diffusers (URI of the diffusers directory), classifier (URI), sources."""
    if not cfg.model.checkpoint and not cfg.classifier.checkpoint:
        raise ValueError("model.checkpoint / classifier.checkpoint: set at least one checkpoint to export")
    out: dict[str, Any] = {"sources": {}}
    if cfg.model.checkpoint:
        from ..diffusion.export import export_diffusers

        local = os.path.join(run.local_dir, "diffusers")
        export_diffusers(cfg.model.checkpoint, local, use_ema=cfg.sample.use_ema)
        out["diffusers"] = _publish_dir(run, local, "diffusers")
        out["sources"]["model.checkpoint"] = cfg.model.checkpoint
        print(f"[export] diffusers UNet2DModel + DDIMScheduler -> {storage.redact(out['diffusers'])}", flush=True)
    if cfg.classifier.checkpoint:
        from ..classify.export import export_classifier

        local = os.path.join(run.local_dir, "classifier")
        export_classifier(cfg.classifier.checkpoint, local)
        out["classifier"] = _publish_dir(run, local, "classifier")
        out["sources"]["classifier.checkpoint"] = cfg.classifier.checkpoint
        print(f"[export] classifier safetensors -> {storage.redact(out['classifier'])}", flush=True)
    return out


__all__ = ["export"]
