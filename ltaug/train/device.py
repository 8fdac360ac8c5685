"""The one device policy: ``resolve_device(resources)``.

``resources.use_gpu=true`` on a machine without CUDA is an error naming the key, never a silent CPU run;
``use_gpu=false`` is the CPU. Inside a Ray Train worker the device comes from Ray (``RayWorld``).
"""
from __future__ import annotations

from typing import Any

import torch

from ..config import ConfigError


def resolve_device(resources: Any) -> torch.device:
    """``cuda`` when ``resources.use_gpu`` (and CUDA is there), ``cpu`` otherwise; a missing GPU is an error."""
    if not getattr(resources, "use_gpu", False):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("resources.use_gpu=true but no CUDA device is available on this machine "
                          f"(torch {torch.__version__}); set resources.use_gpu=false to run on the CPU")
    return torch.device("cuda")


__all__ = ["resolve_device"]
