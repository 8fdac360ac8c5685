"""AID-biased loss support (DiffuLT §2.3, see :class:`~ltaug.diffusion.losses.AIDLoss`): the loss's ID-side
radii from a quantile of the real distances, and the calibration of the term's scale against the eps-MSE.

Calibration: on one fixed batch (``CALIB_BATCH`` real training images drawn with a generator seeded from
``cfg.seed``, t uniform in {0..T-1}, fixed noise, no label drop), the batch means of the eps-MSE and of the
AID term (its ID and OOD sides as the loss gates them), and the gradient norms of each mean w.r.t. the
network parameters. ``train_diffusion`` reports it at initialisation and after training
(``aid_calibration: {init, final}``). Read it as: ``alpha * ratio_grad`` is how hard the AID term pulls
on theta relative to the MSE at the configured alpha; ``alpha_equal_grad = grad_mse / grad_aid`` is the
alpha at which both pull equally. Pure PyTorch.

Measured (MNIST-LT r=100, 16x16, tiny UNet, ResNet-20 baseline features, radius=max, batch of 64): at
initialisation AID/MSE = 0.95 (means) and 2.1 (gradient norms); after 300 CBDM steps (MSE 0.034) 35 and
281, i.e. at alpha = 0.1 the AID term pulls on theta 28x harder than the MSE. The ratio grows ~40x over
training, so no fixed alpha is calibrated at both ends: that is why ``loss.aid_normalize`` scales the term by
running means (alpha = its share of the MSE's magnitude); for a fixed alpha, ``alpha_equal_grad`` (0.0036
there) x the wanted share is the value to use. The old ID side at every t made the trained model's term 3.1x
larger (3.69 vs 1.19): two thirds of it was spent pushing correct small-t reconstructions out of the ball.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .losses import AIDLoss, FeatureSpace, LossContext, MSELoss
from .schedule import NoiseSchedule

CALIB_BATCH = 64
CALIB_SEED_OFFSET = 7919   # the calibration batch's generator: seed + this (not any training step's draws)


@torch.no_grad()
def quantile_radii(space: FeatureSpace, x: Tensor, y: Tensor, num_classes: int, q: float,
                   batch_size: int = 256) -> Tensor:  # x [N,C,H,W] in [-1,1], y [N] -> [C]
    """Per class, the ``q``-quantile of ``||phi(x) - mu_c||`` over the real images of class c (the bank's
    centres); a class without images keeps the bank's radius."""
    dev = space.centers.device
    phi = torch.cat([space.extractor(x[i:i + batch_size].to(dev)).float() for i in range(0, len(x), batch_size)])
    y = y.to(dev).long()
    d = (phi - space.centers.to(phi)[y]).norm(dim=1)
    out = space.radii.detach().clone().float()
    for c in range(num_classes):
        dc = d[y == c]
        if len(dc):
            out[c] = torch.quantile(dc, q)
    return out.to(space.radii)


def calibration_batch(x0: Tensor, y: Tensor, T: int, seed: int, n: int = CALIB_BATCH) -> dict[str, Tensor]:
    """The fixed batch: ``n`` training images (without replacement), t uniform in {0..T-1}, noise."""
    g = torch.Generator().manual_seed(int(seed) + CALIB_SEED_OFFSET)
    idx = torch.randperm(len(x0), generator=g)[:min(n, len(x0))]
    xb = x0[idx]
    t = torch.randint(0, T, (len(idx),), generator=g)
    noise = torch.randn(xb.shape, generator=g, dtype=xb.dtype)
    return {"x0": xb, "y": y[idx].long(), "t": t, "noise": noise}


def _grad_norm(value: Tensor, params: list[nn.Parameter]) -> float:
    if not value.requires_grad:
        return 0.0
    gs = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in gs if g is not None))


def calibrate(model: nn.Module, schedule: NoiseSchedule, term: AIDLoss, batch: dict[str, Tensor],
              num_classes: int, alpha: float) -> dict[str, Any]:
    """The AID term against the eps-MSE on ``batch`` (see the module docstring). Dropout off (eval mode),
    gradients on; the model's mode and gradients are left as they were."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    b = {k: v.to(dev) for k, v in batch.items()}
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        with torch.enable_grad():
            ctx = LossContext(model, schedule, b["x0"], b["y"], b["t"], b["noise"], num_classes=num_classes,
                              passes=("cond",))
            mse = MSELoss()(ctx).mean()
            id_side, ood_side, d = term.sides(ctx)
            aid = (id_side + ood_side).mean()
            g_mse, g_aid = _grad_norm(mse, params), _grad_norm(aid, params)
    finally:
        model.train(was_training)
    d = d.detach()
    radii = term.space.radii.to(d)[b["y"]]
    m, a = float(mse.detach()), float(aid.detach())
    return {
        "batch": len(b["y"]), "alpha": float(alpha),
        "mse": m, "aid": a, "aid_id_side": float(id_side.detach().mean()), "aid_ood_side": float(ood_side.detach().mean()),
        "ratio_mean": a / m if m > 0 else None,
        "grad_mse": g_mse, "grad_aid": g_aid,
        "ratio_grad": g_aid / g_mse if g_mse > 0 else None,
        "alpha_ratio_grad": alpha * g_aid / g_mse if g_mse > 0 else None,
        "alpha_equal_grad": g_mse / g_aid if g_aid > 0 else None,
        # where x0_hat of the batch falls (the filter's bands of the loss's feature space)
        "x0_hat_id": float((d <= radii).float().mean()),
        "x0_hat_aid": float(((d > radii) & (d <= 2 * radii)).float().mean()),
        "x0_hat_ood": float((d > 2 * radii).float().mean()),
        "mean_d_over_d_f": float((d / radii.clamp_min(1e-12)).mean()),
    }


__all__ = ["quantile_radii", "calibration_batch", "calibrate", "CALIB_BATCH"]
