"""``RayWorld``: the World protocol inside a Ray Train worker (rank, world size, device from Ray, DDP
wrapping, reports that carry a small pointer checkpoint so Ray Train can restart the group).

Rank 0 writes ``ckpt-<step>.pt`` into the task's checkpoint directory (the run's storage: local or
s3://; shared storage on multi-node clusters) and reports each one to Ray Train as a pointer checkpoint.
After a worker failure Ray restarts the group and the loop resumes from the newest *valid* checkpoint;
checkpoints hold the unwrapped model and the global step only, so N workers' checkpoints resume on M.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable

import torch
from torch import nn

from .. import storage

POINTER = "ltaug_checkpoint.json"   # the Ray checkpoint: a pointer to the ltaug checkpoint file


class _GatherCat(torch.autograd.Function):
    """All-gather along dim 0 that keeps autograd: forward pads each rank's ``[b_r, ...]`` to the largest
    ``b``, gathers and trims; backward all-reduces (sums) the gradient of the gathered tensor and returns this
    rank's slice, i.e. the sum of every rank's gradient with respect to this rank's rows (works on gloo and NCCL)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: tuple[int, ...], rank: int) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        m = max(sizes)
        x = x.contiguous()
        pad = x.new_zeros((m - x.shape[0], *x.shape[1:]))
        buf = [x.new_empty((m, *x.shape[1:])) for _ in sizes]
        dist.all_gather(buf, torch.cat([x, pad]) if pad.shape[0] else x)
        ctx.sizes, ctx.rank = sizes, rank
        return torch.cat([b[:n] for b, n in zip(buf, sizes)])

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        import torch.distributed as dist

        g = g.contiguous().clone()
        dist.all_reduce(g)
        a = sum(ctx.sizes[:ctx.rank])
        return g[a:a + ctx.sizes[ctx.rank]], None, None


class InjectedFailure(RuntimeError):
    """Raised by a worker on purpose (tests of failure recovery)."""


class RayWorld:
    def __init__(self, on_report: Callable[[dict[str, float], int, str | None], Any] | None = None,
                 fail: dict[str, Any] | None = None) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self._on_report = on_report
        self._fail = fail or {}

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        if self.world_size == 1:
            return model.to(self.device)
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": False})

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1 and torch.distributed.is_initialized():
            value = value.detach().clone()
            torch.distributed.all_reduce(value)
            value /= self.world_size
        return value

    def all_gather(self, value: torch.Tensor) -> torch.Tensor:
        """Every rank's ``value`` concatenated along dim 0 in rank order, with autograd (see ``World``)."""
        import torch.distributed as dist

        if self.world_size == 1 or not dist.is_initialized():
            return value
        n = torch.tensor([value.shape[0]], device=value.device, dtype=torch.long)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        dist.all_gather(sizes, n)
        return _GatherCat.apply(value, tuple(int(s) for s in sizes), dist.get_rank())

    def report(self, metrics: dict[str, float], step: int, checkpoint_dir: str | None = None) -> None:
        import ray.train

        self._maybe_fail(step)
        metrics = {**{k: float(v) for k, v in metrics.items()}, "step": step}
        if self.is_main and self._on_report is not None:
            self._on_report(metrics, step, checkpoint_dir)
        if checkpoint_dir and self.is_main:
            from ..train import checkpoint as ckpt_io

            with tempfile.TemporaryDirectory() as d:
                with open(os.path.join(d, POINTER), "w") as fh:
                    json.dump({"checkpoint": ckpt_io.path_for(checkpoint_dir, step), "step": step}, fh)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                                 checkpoint_dir_name=f"checkpoint_{step:09d}")
        else:
            ray.train.report(metrics)   # a barrier: every rank reports the same number of times

    def _maybe_fail(self, step: int) -> None:
        f = self._fail
        if not f or step < f["at_step"] or self.rank != f.get("rank", self.world_size - 1):
            return
        if storage.exists(f["marker"]):
            return
        storage.write_bytes(f["marker"], str(step).encode())
        raise InjectedFailure(f"injected failure on rank {self.rank} at step {step}")


__all__ = ["RayWorld", "InjectedFailure", "POINTER"]
