"""Reverse-process steppers on a respaced grid: ancestral DDPM (Ho et al. 2020) and DDIM (Song et al. 2021).

A stepper maps ``(i, x_t, eps)`` to the posterior ``(mean, std)`` of ``x_{t_prev}`` *before* noise is
added; the sampling loop adds ``std * z``. Mean-space guidance edits ``mean`` in between, which is why
minority guidance works under both samplers. ``guidance_variance(i)`` is the variance used to scale
mean-space guidance: the stepper's own ancestral variance for DDPM, and for DDIM (which may have
``std = 0``) the DDPM 'fixedlarge' variance of the same grid step (algorithms.md §4.7).
"""
from __future__ import annotations

import math
from typing import Callable, Protocol

from torch import Tensor

from .schedule import Grid


class Stepper(Protocol):
    grid: Grid

    def step(self, i: int, x_t: Tensor, eps: Tensor) -> tuple[Tensor, float]: ...

    def guidance_variance(self, i: int) -> float: ...


def _x0(grid: Grid, i: int, x_t: Tensor, eps: Tensor, clip: bool) -> Tensor:
    ab = float(grid.ab[i])
    x0 = (x_t - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    return x0.clamp(-1, 1) if clip else x0


class DDPMStepper:
    """Ancestral sampling: ``mean = mu_tilde(x0_hat, x_t)``, ``std^2`` = beta ('fixedlarge', CBDM) or the
    posterior variance ('fixedsmall')."""

    def __init__(self, grid: Grid, variance: str = "fixedlarge", clip_denoised: bool = False) -> None:
        if variance not in ("fixedlarge", "fixedsmall"):
            raise ValueError(f"sample.variance: unknown {variance!r}; choose fixedlarge or fixedsmall")
        self.grid, self.clip = grid, clip_denoised
        self.var = grid.fixedlarge_variance() if variance == "fixedlarge" else grid.posterior_variance
        ab, abp, beta = grid.ab, grid.ab_prev, grid.betas
        self.c_x0 = beta * abp.sqrt() / (1 - ab)
        self.c_xt = (1 - abp) * (1 - beta).sqrt() / (1 - ab)

    def step(self, i: int, x_t: Tensor, eps: Tensor) -> tuple[Tensor, float]:
        x0 = _x0(self.grid, i, x_t, eps, self.clip)
        mean = float(self.c_x0[i]) * x0 + float(self.c_xt[i]) * x_t
        std = math.sqrt(float(self.var[i])) if i < len(self.grid) - 1 else 0.0
        return mean, std

    def guidance_variance(self, i: int) -> float:
        return float(self.var[i])


class DDIMStepper:
    """DDIM: ``mean = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps``,
    ``sigma = eta sqrt((1-ab_prev)/(1-ab)) sqrt(1 - ab/ab_prev)`` (eta = 0: deterministic)."""

    def __init__(self, grid: Grid, eta: float = 0.0, clip_denoised: bool = False) -> None:
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"sample.eta must be in [0, 1], got {eta}")
        self.grid, self.eta, self.clip = grid, eta, clip_denoised
        ab, abp = grid.ab, grid.ab_prev
        self.sigma = eta * ((1 - abp) / (1 - ab)).sqrt() * (1 - ab / abp).sqrt()
        self._gvar = grid.fixedlarge_variance()

    def step(self, i: int, x_t: Tensor, eps: Tensor) -> tuple[Tensor, float]:
        x0 = _x0(self.grid, i, x_t, eps, self.clip)
        if self.clip:
            ab = float(self.grid.ab[i])
            eps = (x_t - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        abp, s = float(self.grid.ab_prev[i]), float(self.sigma[i])
        mean = math.sqrt(abp) * x0 + math.sqrt(max(1 - abp - s * s, 0.0)) * eps
        return mean, (s if i < len(self.grid) - 1 else 0.0)

    def guidance_variance(self, i: int) -> float:
        return float(self._gvar[i])


# Registry: name -> factory(grid, sample_config-like kwargs)
STEPPERS: dict[str, Callable[..., Stepper]] = {
    "ddpm": lambda grid, eta=0.0, variance="fixedlarge", clip_denoised=False: DDPMStepper(grid, variance, clip_denoised),
    "ddim": lambda grid, eta=0.0, variance="fixedlarge", clip_denoised=False: DDIMStepper(grid, eta, clip_denoised),
}


def make_stepper(name: str, grid: Grid, **kw) -> Stepper:
    if name not in STEPPERS:
        raise ValueError(f"sample.sampler: unknown {name!r}; choose one of {sorted(STEPPERS)}")
    return STEPPERS[name](grid, **kw)
