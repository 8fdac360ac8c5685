"""Ray only: the ``RayLauncher`` of the stages (Ray Train, Ray Data, Ray Tune), ``RayWorld`` and
``ensure_ray``. The only package that imports ``ray``; nothing here decides *what* a stage computes."""
from .launcher import RayLauncher
from .runtime import ensure_ray
from .world import InjectedFailure, RayWorld

__all__ = ["RayLauncher", "RayWorld", "InjectedFailure", "ensure_ray"]
