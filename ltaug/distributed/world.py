"""``RayWorld``: the World protocol inside a Ray Train worker (rank, world size, device from Ray, DDP
wrapping, reports that carry a small pointer checkpoint so Ray Train can restart the group).

Rank 0 writes ``ckpt-<step>.pt`` into the task's checkpoint directory (the run's storage: local or
s3://; shared storage on multi-node clusters) and reports each one to Ray Train as a pointer checkpoint.
After a worker failure Ray restarts the group and the loop resumes from the newest *valid* checkpoint;
checkpoints hold the unwrapped model and the global step only, so N workers' checkpoints resume on M.

Metrics leave the workers only through ``ray.train.report`` (the driver side logs them, see ``train.py``).
So that no step goes missing across a failure, rank 0 first writes each report into a *journal*
(``step-<step>.json`` under the run's storage); the first report of a restarted group carries, under
``REPLAY``, the journalled reports after Ray's latest checkpoint and before this step: the ones Ray may never
have delivered (the loop resumed from a newer ltaug checkpoint, or the failure struck before the controller
collected them). Re-delivered steps are logged twice (MLflow keeps both); none is skipped.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any, Callable

import torch
from torch import nn

from .. import storage

POINTER = "ltaug_checkpoint.json"   # the Ray checkpoint: a pointer to the ltaug checkpoint file
REPLAY = "_ltaug_replay"            # report key: journalled reports a failure may have kept from the driver
_CKPT_DIR = re.compile(r"checkpoint_(\d+)$")


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
                 fail: dict[str, Any] | None = None, journal: str | None = None) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self._on_report = on_report
        self._fail = fail or {}
        self._journal = journal if self.rank == 0 else None
        self._replayed = False

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

        metrics = {**{k: float(v) for k, v in metrics.items()}, "step": step}
        out: dict[str, Any] = dict(metrics)
        if self._journal:
            if not self._replayed:
                self._replayed = True
                missed = self._undelivered(step)
                if missed:
                    out[REPLAY] = missed
            storage.write_bytes(storage.join(self._journal, f"step-{step:09d}.json"), json.dumps(metrics).encode())
        self._maybe_fail(step)
        if self.is_main and self._on_report is not None:
            self._on_report(metrics, step, checkpoint_dir)
        if checkpoint_dir and self.is_main:
            from ..train import checkpoint as ckpt_io

            with tempfile.TemporaryDirectory() as d:
                with open(os.path.join(d, POINTER), "w") as fh:
                    json.dump({"checkpoint": ckpt_io.path_for(checkpoint_dir, step), "step": step}, fh)
                ray.train.report(out, checkpoint=ray.train.Checkpoint.from_directory(d),
                                 checkpoint_dir_name=f"checkpoint_{step:09d}")
        else:
            ray.train.report(out)   # a barrier: every rank reports the same number of times

    def _undelivered(self, step: int) -> list[dict[str, float]]:
        """Journalled reports of earlier attempts after Ray's latest checkpoint and before ``step``."""
        import ray.train

        ck = ray.train.get_checkpoint()
        m = _CKPT_DIR.search((ck.path if ck is not None else "").rstrip("/"))
        delivered = int(m.group(1)) if m else 0     # up to Ray's checkpoint every report reached the controller
        out = []
        for uri in storage.listdir(self._journal, ".json"):
            s = int(os.path.basename(uri)[len("step-"):-len(".json")])
            if delivered < s < step:
                out.append(json.loads(storage.read_bytes(uri)))
        return out

    def _maybe_fail(self, step: int) -> None:
        """Tests: ``fail = {"at_step", "marker", "rank"?, "mode"?}`` fails one rank once, at the first report at
        or after ``at_step``: ``mode="raise"`` (default) raises InjectedFailure, ``"exit"`` kills the process
        (``os._exit(137)``: no exception, no cleanup, like an OOM kill)."""
        f = self._fail
        if not f or step < f["at_step"] or self.rank != f.get("rank", self.world_size - 1):
            return
        if storage.exists(f["marker"]):
            return
        storage.write_bytes(f["marker"], str(step).encode())
        if f.get("mode") == "exit":
            os._exit(137)
        raise InjectedFailure(f"injected failure on rank {self.rank} at step {step}")


__all__ = ["RayWorld", "InjectedFailure", "POINTER", "REPLAY"]
