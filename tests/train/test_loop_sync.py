"""The loop without per-step host syncs, gradient accumulation (with DDP ``no_sync``) and the foreach EMA."""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

from ltaug.train import LocalWorld, LoopSpec, StepBatches, fit
from ltaug.train.ema import EMA

X = torch.randn(40, 4, generator=torch.Generator().manual_seed(1))
Y = X.sum(1, keepdim=True)
BASE = dict(lr=0.01, optimizer="adam", momentum=0.0, weight_decay=0.0, warmup=0, milestones=(), gamma=0.1,
            grad_clip=1.0, ema_decay=0.9, amp=False, grad_accum=1, log_every=4, ckpt_every=0, keep_checkpoints=2,
            seed=3, desc="toy")


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))


def mse(batches, wrap=lambda t, step: t):
    def obj(model, step, g):
        idx = batches.indices(step)
        loss = (model(X[idx]) - Y[idx]).pow(2).mean()
        return wrap(loss, step), {"mse": wrap(loss.detach(), step)}
    return obj


SYNCS: list[int] = []
CURRENT = [0]


class Counted(torch.Tensor):
    """A tensor that records every read to the host (bool/item/float) with the optimizer step it happened in."""

    def __bool__(self):
        SYNCS.append(CURRENT[0])
        return torch.Tensor.__bool__(self.as_subclass(torch.Tensor))

    def item(self):
        SYNCS.append(CURRENT[0])
        return self.as_subclass(torch.Tensor).item()

    def __float__(self):
        SYNCS.append(CURRENT[0])
        return float(self.as_subclass(torch.Tensor))

    def __int__(self):
        SYNCS.append(CURRENT[0])
        return int(self.as_subclass(torch.Tensor))


def test_no_host_sync_between_log_steps():
    SYNCS.clear()

    def wrap(t, step):
        CURRENT[0] = step
        return t.as_subclass(Counted)

    fit(net(), mse(StepBatches(40, 8, seed=5), wrap), LoopSpec(steps=12, **{**BASE, "log_every": 4}),
        LocalWorld("cpu"), progress=False)
    # every host read of the loss, the logs or the finite check happens on a step that ends a log window (3, 7, 11)
    assert SYNCS and set(SYNCS) <= {3, 7, 11}, sorted(set(SYNCS))


def test_nonfinite_loss_reported_with_its_step_and_never_checkpointed(tmp_path):
    def obj(model, step, g):
        loss = (model(X[:8]) - Y[:8]).pow(2).mean()
        return (loss * float("nan") if step == 5 else loss), {}

    with pytest.raises(FloatingPointError, match="at step 5"):
        fit(net(), obj, LoopSpec(steps=20, **{**BASE, "log_every": 4, "ckpt_every": 8}), LocalWorld("cpu"),
            ckpt_dir=str(tmp_path), progress=False)
    assert not list(tmp_path.glob("ckpt-*.pt"))   # raised at step 8's boundary, before its checkpoint


def test_grad_accum_equals_one_big_batch():
    a = fit(net(), mse(StepBatches(40, 8, seed=5)), LoopSpec(steps=6, **BASE), LocalWorld("cpu"), progress=False)
    b = fit(net(), mse(StepBatches(40, 4, seed=5)), LoopSpec(steps=6, **{**BASE, "grad_accum": 2}), LocalWorld("cpu"),
            progress=False)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-6, msg=k)
    assert [h["step"] for h in b.history] == [4, 6]
    assert b.history[-1]["loss"] == pytest.approx(a.history[-1]["loss"], rel=1e-5)


def test_grad_accum_skips_ddp_sync_on_all_but_the_last_micro_batch():
    calls = []

    class DDPLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = net()

        def forward(self, x):
            return self.module(x)

        @contextlib.contextmanager
        def no_sync(self):
            calls.append(1)
            yield

    fit(DDPLike(), mse(StepBatches(40, 4, seed=5)), LoopSpec(steps=5, **{**BASE, "grad_accum": 3}), LocalWorld("cpu"),
        progress=False)
    assert len(calls) == 5 * 2


def test_foreach_ema_matches_the_per_tensor_update():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    ema = EMA(model, 0.9)
    ref = copy.deepcopy(ema.model)
    for i in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(5, 4))          # moves BatchNorm's running stats and its integer counter
        ema.update(model)
        src = model.state_dict()
        with torch.no_grad():
            for k, v in ref.state_dict().items():
                if v.dtype.is_floating_point:
                    v.mul_(0.9).add_(src[k], alpha=0.1)
                else:
                    v.copy_(src[k])
    for (k, va), vb in zip(ema.model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(va, vb), k
