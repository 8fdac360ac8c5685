"""Ray-free orchestration: one function per stage, each taking ``(cfg, run, launcher)``.

``train_diffusion``, ``train_classifier``, ``generate`` (+ ``verify_output``), ``tune``, ``pipeline``. The
launcher (``LocalLauncher`` here, ``ltaug.distributed.RayLauncher`` on Ray) is chosen once by the caller
from ``resources.num_workers``; a stage never asks which one it got. ``Run`` is a job's run directory and
tracker; ``stage_data`` the cached dataset artifact every stage and worker reads.
"""
from .data import stage_data
from .evaluate import evaluate
from .generate import generate, setup_generation, verify_output
from .inspect_data import inspect_data
from .launcher import Launcher, LocalLauncher, Task, TrialResult, TrialSpace
from .pipeline import pipeline
from .run import Run, open_run, run_dir, run_name
from .train_classifier import train_classifier
from .train_diffusion import train_diffusion
from .tune import tune

__all__ = ["Launcher", "LocalLauncher", "Task", "TrialResult", "TrialSpace", "Run", "open_run", "run_dir",
           "run_name", "stage_data", "train_diffusion", "train_classifier", "generate", "verify_output", "tune",
           "pipeline", "setup_generation", "inspect_data", "evaluate"]
