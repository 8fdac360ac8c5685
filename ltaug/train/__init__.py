"""The one training loop (``fit``), World protocol, EMA and checkpoints."""
from .checkpoint import CheckpointError, open_checkpoint, resolve_checkpoint
from .device import resolve_device
from .ema import EMA, unwrap
from .loop import LoopSpec, StepBatches, TrainResult, TrainState, fit, lr_factor, step_generator
from .world import LocalWorld, World

__all__ = ["fit", "LoopSpec", "StepBatches", "TrainResult", "TrainState", "EMA", "unwrap",
           "LocalWorld", "World", "step_generator", "lr_factor", "CheckpointError",
           "open_checkpoint", "resolve_checkpoint", "resolve_device"]
