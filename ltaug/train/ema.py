"""Exponential moving average of model weights (Polyak averaging; DDPM / CBDM evaluate EMA weights)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(unwrap(model)).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        src = unwrap(model).state_dict()
        for k, v in self.model.state_dict().items():
            s = src[k].detach()
            if v.dtype.is_floating_point:
                v.mul_(self.decay).add_(s.to(v.dtype), alpha=1.0 - self.decay)
            else:
                v.copy_(s)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(sd)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / compiled wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return getattr(model, "_orig_mod", model)
