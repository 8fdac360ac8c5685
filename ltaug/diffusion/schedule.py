"""Noise schedules (DDPM, Ho et al. 2020; cosine, Nichol & Dhariwal 2021) and respaced sampling grids.

All tables are float64 on the CPU; :meth:`NoiseSchedule.at` gathers them for a batch of timesteps and
casts to the input's device and dtype, so device and dtype follow the input. Timesteps that live on an
accelerator are gathered from a copy of the table on that device (made once), so a training step or a guided
sampling step never copies ``t`` back to the host (no synchronisation); the values are the same.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

LINEAR_BETA_START = 1e-4   # DDPM / CBDM linear schedule (algorithms.md §0)
LINEAR_BETA_END = 0.02
COSINE_S = 0.008           # Nichol & Dhariwal 2021, improved DDPM
COSINE_MAX_BETA = 0.999


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    """[B] -> [B,1,1,...] matching ``like``'s rank, device and dtype."""
    return v.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


class NoiseSchedule:
    """Discrete-time variance-preserving schedule: ``x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps``, t in {0..T-1}."""

    def __init__(self, betas: Tensor) -> None:
        betas = betas.detach().to(torch.float64).cpu()
        if betas.dim() != 1 or len(betas) < 2 or not ((betas > 0) & (betas < 1)).all():
            raise ValueError("betas must be a 1-d tensor of values in (0, 1) with at least 2 entries")
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bar = torch.cumprod(self.alphas, 0)
        self.alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        # q(x_{t-1} | x_t, x0) (DDPM eq. 6-7)
        self.posterior_variance = betas * (1 - self.alpha_bar_prev) / (1 - self.alpha_bar)
        self.posterior_coef_x0 = betas * self.alpha_bar_prev.sqrt() / (1 - self.alpha_bar)
        self.posterior_coef_xt = (1 - self.alpha_bar_prev) * self.alphas.sqrt() / (1 - self.alpha_bar)
        self._on_device: dict = {}   # (table id, device) -> the table on that device

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_on_device"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._on_device = {}

    # -- construction ---------------------------------------------------------------------------
    @staticmethod
    def linear(T: int = 1000, beta_start: float = LINEAR_BETA_START, beta_end: float = LINEAR_BETA_END) -> "NoiseSchedule":
        return NoiseSchedule(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))

    @staticmethod
    def cosine(T: int = 1000, s: float = COSINE_S) -> "NoiseSchedule":
        f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        betas = [min(1 - f(i + 1) / f(i), COSINE_MAX_BETA) for i in range(T)]
        return NoiseSchedule(torch.tensor(betas, dtype=torch.float64))

    @staticmethod
    def from_config(cfg) -> "NoiseSchedule":
        """From a ``DiffusionConfig`` (``schedule``, ``timesteps``, ``beta_start``, ``beta_end``)."""
        if cfg.schedule == "linear":
            return NoiseSchedule.linear(cfg.timesteps, cfg.beta_start, cfg.beta_end)
        if cfg.schedule == "cosine":
            return NoiseSchedule.cosine(cfg.timesteps)
        raise ValueError(f"diffusion.schedule: unknown {cfg.schedule!r}; choose linear or cosine")

    @property
    def T(self) -> int:
        return len(self.betas)

    def at(self, table: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """Gather ``table[t]`` for t [B] and broadcast like ``like`` [B,C,H,W]."""
        t = t.detach().long()
        if t.device.type == "cpu":
            return _bcast(table[t], like)
        key = (id(table), t.device)
        dev = self._on_device.get(key)
        if dev is None:   # float64 where the device has it (MPS does not); the cast to like's dtype comes after
            dev = self._on_device[key] = table.to(t.device, torch.float32 if t.device.type == "mps" else table.dtype)
        return _bcast(dev[t], like)

    # -- forward process and conversions --------------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:  # x0 [B,C,H,W], t [B]
        ab = self.at(self.alpha_bar, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def eps_to_x0(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Tweedie: ``x0_hat = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)``."""
        ab = self.at(self.alpha_bar, t, x_t)
        return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()

    def x0_to_eps(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        ab = self.at(self.alpha_bar, t, x_t)
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    def posterior_mean(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        return self.at(self.posterior_coef_x0, t, x_t) * x0 + self.at(self.posterior_coef_xt, t, x_t) * x_t

    def posterior_var(self, t: Tensor, like: Tensor) -> Tensor:
        return self.at(self.posterior_variance, t, like)

    def time_weight(self, t: Tensor, like: Tensor | None = None) -> Tensor:
        """``t / T`` as float [B] (CBDM / CCUA ramp); device and dtype of ``like`` when given."""
        w = t.double() / self.T
        return w.to(dtype=like.dtype, device=like.device) if like is not None else w.float()

    def respace(self, steps: int) -> "Grid":
        return Grid.respaced(self, steps)


def respaced_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` evenly spaced training timesteps in {0..T-1}, including 0 and T-1 (ascending)."""
    if not 1 <= steps <= T:
        raise ValueError(f"sampling steps must be in [1, {T}], got {steps}")
    if steps == 1:
        return [T - 1]
    return sorted({round(i * (T - 1) / (steps - 1)) for i in range(steps)})


@dataclass(frozen=True)
class Grid:
    """A respaced sampling grid, in sampling order (noisy -> clean).

    ``t[i]`` is the training timestep fed to the model at step i; ``ab[i]``, ``ab_prev[i]`` the cumulative
    alphas of this step and of the next (1 at the end). The respaced betas ``1 - ab/ab_prev`` define the
    ancestral (DDPM) process on the grid (Nichol & Dhariwal 2021, §4).
    """

    t: tuple[int, ...]
    ab: Tensor        # float64 [N]
    ab_prev: Tensor   # float64 [N]
    T: int

    @staticmethod
    def respaced(schedule: NoiseSchedule, steps: int) -> "Grid":
        ts = respaced_timesteps(schedule.T, steps)[::-1]
        ab = schedule.alpha_bar[ts]
        ab_prev = torch.cat([ab[1:], torch.ones(1, dtype=torch.float64)])
        return Grid(tuple(ts), ab, ab_prev, schedule.T)

    def __len__(self) -> int:
        return len(self.t)

    @property
    def betas(self) -> Tensor:
        return 1 - self.ab / self.ab_prev

    @property
    def posterior_variance(self) -> Tensor:
        return self.betas * (1 - self.ab_prev) / (1 - self.ab)

    def fixedlarge_variance(self) -> Tensor:
        """sigma_i^2 = beta_i, the last one replaced by the posterior variance (guided-diffusion 'fixedlarge')."""
        v = self.betas.clone()
        if len(v) > 1:
            v[-1] = self.posterior_variance[-2]
        return v

    def index_of_fraction(self, frac: float) -> int:
        """Index of the grid step whose training timestep is nearest ``frac * T``."""
        target = frac * self.T
        return min(range(len(self.t)), key=lambda i: abs(self.t[i] - target))
