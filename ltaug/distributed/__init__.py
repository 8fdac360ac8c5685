"""Thin Ray adapters around the pure core: Ray Train (World + TorchTrainer runner), the Ray Data generation
pipeline, Ray Tune sweeps. The only package that imports ``ray``; it imports it lazily, so
``resources.num_workers=0`` (in-process, no Ray) works without starting Ray."""
from .generation import GenerationSetup, run_generation, setup_generation
from .runtime import ensure_ray

__all__ = ["ensure_ray", "run_generation", "setup_generation", "GenerationSetup"]
