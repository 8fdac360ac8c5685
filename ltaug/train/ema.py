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

        self._pairs: tuple | None = None   # (source model id, float EMA/source lists, other EMA/source lists)

    def _lists(self, model: nn.Module) -> tuple:
        src = unwrap(model)
        if self._pairs is None or self._pairs[0] != id(src):
            sd, mine = src.state_dict(keep_vars=True), self.model.state_dict()   # the live tensors, not snapshots
            fl = [(v, sd[k]) for k, v in mine.items() if v.dtype.is_floating_point and sd[k].dtype == v.dtype]
            other = [(v, sd[k]) for k, v in mine.items() if not (v.dtype.is_floating_point and sd[k].dtype == v.dtype)]
            self._pairs = (id(src), [a for a, _ in fl], [b for _, b in fl], other)
        return self._pairs

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``ema = decay * ema + (1 - decay) * w`` over every floating tensor with two fused foreach kernels
        (the same two operations per tensor as the per-tensor form, so values are bit-identical); integer
        buffers (BatchNorm counters) are copied."""
        _, ema_t, src_t, other = self._lists(model)
        if ema_t:
            torch._foreach_mul_(ema_t, self.decay)
            torch._foreach_add_(ema_t, src_t, alpha=1.0 - self.decay)
        for v, s in other:
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
