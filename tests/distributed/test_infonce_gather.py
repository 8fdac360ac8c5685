"""CCUA's InfoNCE across Ray Train workers: the negatives are the whole global batch (``World.all_gather`` with
autograd), so the same 8 samples give the same per-sample InfoNCE on 1 process and split over 2 gloo workers,
and the DDP-averaged gradient of ``mse + infonce`` equals the single-process one. Also an uneven split (7 over
2: the gather pads) and the negative queue (filled with the global batch's keys). One forward each, a micro
UNet, a fixed batch."""
from __future__ import annotations

import os
import sys

import pytest
import torch

pytestmark = [pytest.mark.ray]

MICRO = dict(in_channels=1, image_size=8, num_classes=3, ch=8, ch_mult=(1, 2), num_res_blocks=1,
             attn_resolutions=(4,), dropout=0.0, num_heads=1, groups=4)


def _model():
    from ltaug.diffusion import UNet, UNetSpec

    m = UNet(UNetSpec(**MICRO))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return m


def _batch(B: int, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(B, 1, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(B, 1, 8, 8, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    y = torch.randint(0, 3, (B,), generator=g)
    return x0, y, t, noise


def _ctx(model, idx, B, gather, seed=3, passes=("cond", "uncond")):
    from ltaug.diffusion import LossContext, NoiseSchedule

    x0, y, t, noise = _batch(B, seed)
    return LossContext(model, NoiseSchedule.linear(1000), x0[idx], y[idx], t[idx], noise[idx], num_classes=3,
                       passes=passes, features=True, gather=gather)


def _per_sample(model, world, B, mode="batch", seeds=(3,)):
    """InfoNCE per sample of this rank's strided slice (StepBatches' split) after len(seeds) - 1 queue fills."""
    from ltaug.diffusion.losses import InfoNCELoss

    idx = torch.arange(B)[world.rank::world.world_size]
    term = InfoNCELoss(0.1, mode=mode, queue_size=16, seed=7)
    with torch.no_grad():
        for s in seeds:
            per = term(_ctx(model, idx, B, world.all_gather, seed=s, passes=("uncond",)))
    return idx, per


def _composite():
    from ltaug.diffusion.losses import CompositeLoss, InfoNCELoss, MSELoss

    return CompositeLoss({"mse": (MSELoss(), 1.0), "infonce": (InfoNCELoss(0.1), 1.0)})


def _gather_fn(task, world, tracker) -> dict:
    """Every rank: values (no grad) for B=8, 7 and the queue; then one DDP step of mse + infonce on B=8."""
    torch.set_num_threads(1)
    model = _model()
    out = {}
    for name, B, mode, seeds in (("even", 8, "batch", (3,)), ("odd", 7, "batch", (3,)), ("queue", 8, "queue", (4, 3))):
        idx, per = _per_sample(model, world, B, mode, seeds)
        order = torch.argsort(world.all_gather(idx))     # rank order -> global sample order
        out[name] = world.all_gather(per)[order].tolist()
    net = world.wrap(model)
    loss = _composite()
    ctx = _ctx(net, torch.arange(8)[world.rank::world.world_size], 8, world.all_gather, passes=loss.passes)
    total, _ = loss(ctx)
    total.backward()                                     # DDP averages; the gather's backward sums across ranks
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    if world.is_main:
        path = os.path.join(task.run_dir, "grads.pt")
        torch.save(grads, path)
        out["grads"] = path
    return out


@pytest.fixture
def by_value():
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers cannot import this test module
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_infonce_on_two_workers_equals_one_process(ray_session, by_value, tmp_path):
    from ltaug.config import load_config
    from ltaug.distributed import RayLauncher
    from ltaug.stages import Task, open_run
    from ltaug.train import LocalWorld

    cfg = load_config(None, [f"run.output_dir={tmp_path}/runs", "tracking.uri=none", "resources.num_workers=2",
                             "resources.cpus_per_worker=0.5"])
    run = open_run(cfg, "infonce_gather", tracked=False)
    out = RayLauncher(cfg).train(_gather_fn, Task("toy", cfg, "", run.path("checkpoints"), run.dir), run.tracker)
    assert out["world_size"] == 2

    local = LocalWorld("cpu")
    model = _model()
    for name, B, mode, seeds in (("even", 8, "batch", (3,)), ("odd", 7, "batch", (3,)), ("queue", 8, "queue", (4, 3))):
        _, per = _per_sample(model, local, B, mode, seeds)
        torch.testing.assert_close(torch.tensor(out[name]), per, rtol=0, atol=1e-5, msg=name)
    # with each worker's own negatives only (what CCUA's per-GPU code computes) the values would differ
    from ltaug.diffusion.losses import InfoNCELoss

    full = _per_sample(model, local, 8)[1]
    with torch.no_grad():
        own = InfoNCELoss(0.1)(_ctx(model, torch.arange(8)[0::2], 8, None, passes=("uncond",)))
    assert (own - full[0::2]).abs().max() > 1e-3

    loss = _composite()
    ctx = _ctx(model, torch.arange(8), 8, local.all_gather, passes=loss.passes)
    total, _ = loss(ctx)
    total.backward()
    ref = torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.testing.assert_close(torch.load(out["grads"]), ref, rtol=1e-4, atol=1e-7)
