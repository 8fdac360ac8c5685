"""Checkpoints: ``{format, kind, config, model, ema, optimizer, step, rng, extra}`` state_dicts.

They load with ``torch.load(..., weights_only=True)`` (no pickled code). A checkpoint directory keeps
``ckpt-<step>.pt`` files; :func:`latest_valid` skips a truncated or corrupt latest file and falls back
to the previous one.
"""
from __future__ import annotations

import io
import random
import re
import warnings
from typing import Any

import numpy as np
import torch

from .. import storage

FORMAT = "ltaug-ckpt-v1"
_NAME = re.compile(r"ckpt-(\d{9})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file."""


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                      int(np_state[3]), float(np_state[4])],
            "python": _py_state_to_list(random.getstate())}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    v, inner, g = state["python"]
    random.setstate((v, tuple(inner), g))


def _py_state_to_list(s: tuple) -> list:
    return [s[0], list(s[1]), s[2]]


def to_bytes(ckpt: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


def save(uri: str, ckpt: dict[str, Any]) -> str:
    """Write a checkpoint atomically (temp file + rename locally; one PUT on S3)."""
    ckpt = {"format": FORMAT, **ckpt}
    storage.write_bytes(uri, to_bytes(ckpt))
    return uri


def load(uri: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``; a corrupt, truncated or foreign file is a :class:`CheckpointError`."""
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {uri}") from None
    try:
        ckpt = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise CheckpointError(f"{uri}: not a loadable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{uri}: not an ltaug checkpoint (format {ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__!r})")
    return ckpt


def path_for(directory: str, step: int) -> str:
    return storage.join(directory, f"ckpt-{step:09d}.pt")


def list_checkpoints(directory: str) -> list[tuple[int, str]]:
    out = []
    for uri in storage.listdir(directory, ".pt"):
        m = _NAME.search(uri)
        if m:
            out.append((int(m.group(1)), uri))
    return sorted(out)


def latest_valid(directory: str, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The newest checkpoint in ``directory`` that loads; corrupt newer ones are reported and skipped."""
    for step, uri in reversed(list_checkpoints(directory)):
        try:
            ckpt = load(uri, map_location)
            ckpt["_uri"] = uri
            return ckpt
        except CheckpointError as e:
            warnings.warn(f"skipping unusable checkpoint: {e}", stacklevel=2)
    return None


def open_checkpoint(uri: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint ``uri`` names: a ``.pt`` file, or the newest *valid* ``ckpt-*.pt`` of a directory.

    The one meaning of "the latest checkpoint of a directory" (corrupt newer files are skipped with a
    warning). The returned dict carries the resolved file URI as ``_uri``."""
    if not uri:
        raise CheckpointError("no checkpoint given (empty URI)")
    if uri.endswith(".pt"):
        ckpt = load(uri, map_location)
        ckpt["_uri"] = uri
        return ckpt
    if not storage.exists(uri):
        raise CheckpointError(f"checkpoint not found: {uri}")
    ckpt = latest_valid(uri, map_location)
    if ckpt is None:
        raise CheckpointError(f"{uri}: no valid ckpt-<step>.pt checkpoint in this directory")
    return ckpt


def resolve_checkpoint(uri: str) -> str:
    """The file URI of the checkpoint ``uri`` names (see :func:`open_checkpoint`); it is checked to load."""
    return open_checkpoint(uri)["_uri"]


def prune(directory: str, keep: int) -> None:
    ckpts = list_checkpoints(directory)
    for _, uri in ckpts[:-keep] if keep > 0 else []:
        fs, path = storage.get_fs(uri)
        fs.rm_file(path)
