"""The World protocol: where a training loop runs (rank, device, wrapping, reporting).

``LocalWorld`` is the single-process implementation; ``ltaug.distributed`` adds the Ray Train one.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
from torch import nn


class World(Protocol):
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool: ...

    def wrap(self, model: nn.Module) -> nn.Module: ...

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor: ...

    def all_gather(self, value: torch.Tensor) -> torch.Tensor:
        """Every rank's ``value [b_r, ...]`` concatenated along dim 0 in rank order, ``[sum_r b_r, ...]``
        (``b_r`` may differ). Differentiable: the gradient reaching each rank's slice is summed over the
        ranks and returned to its owner, so with DDP's gradient averaging a loss on gathered tensors has
        the single-process gradient (CCUA's InfoNCE negatives across workers)."""
        ...

    def report(self, metrics: dict[str, float], step: int, checkpoint_dir: str | None = None) -> None: ...


class LocalWorld:
    """One process; ``report`` forwards to an optional callback (e.g. a tracker)."""

    def __init__(self, device: str | torch.device | None = None,
                 on_report: Callable[[dict[str, float], int, str | None], Any] | None = None) -> None:
        self.rank = 0
        self.world_size = 1
        # no device policy here: callers pass ltaug.train.resolve_device(resources); the default is the CPU
        self.device = torch.device(device) if device else torch.device("cpu")
        self._on_report = on_report

    @property
    def is_main(self) -> bool:
        return True

    def wrap(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def all_gather(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def report(self, metrics: dict[str, float], step: int, checkpoint_dir: str | None = None) -> None:
        if self._on_report is not None:
            self._on_report(metrics, step, checkpoint_dir)
