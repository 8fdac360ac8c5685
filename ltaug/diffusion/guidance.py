"""Guidance plug-ins for the one sampling loop.

- :class:`ClassifierFree` (Ho & Salimans 2021; CBDM convention ``eps + omega (eps_c - eps_u)``,
  algorithms.md §1.2) acts in eps space and needs the unconditional prediction.
- :class:`MinorityGuidance` (self-guided minority sampling, Um & Ye, ECCV 2024, §4.2-4.3) acts in mean
  space: ``mean += w * Sigma_t * g / max|g|`` with ``g = grad_{x_t} D(x0_hat(x_t), sg x0_hat(x_s))``,
  where ``x_s`` re-noises ``x0_hat`` to ``s = perturb * T``. It reuses the step's own forward pass
  (run with grad on guided steps), applies every ``every`` steps inside a ``[start, stop)`` window and
  works under DDPM and DDIM.

A guidance declares its ``space`` (``eps`` | ``mean``), the predictions it ``needs`` and ``active(i, n)``.
Discrepancies ``D`` (registry :data:`DISTANCES`): ``l2`` (the reference fallback, p = 2), ``classifier``
(L2 in a frozen classifier's feature space, a perceptual distance without downloads) and ``lpips``
(a local TorchScript LPIPS module; nothing is downloaded).
"""
from __future__ import annotations

from typing import Callable, Protocol, Union

import torch
from torch import Tensor

from .schedule import NoiseSchedule

MINORITY_PERTURB = 0.8  # s = 0.8 T (SG-minority p_ratio)
MINORITY_EVERY = 5      # inter_rate (SG-minority default)

Distance = Callable[[Tensor, Tensor], Tensor]  # (x0_hat [B,...] with grad, target [B,...]) -> [B]


class Guidance(Protocol):
    space: str
    needs: tuple[str, ...]

    def active(self, i: int, n: int) -> bool: ...


class ClassifierFree:
    """``eps_c + omega (eps_c - eps_u)``; omega = 0 is plain conditional sampling."""

    space, needs = "eps", ("uncond",)

    def __init__(self, omega: float) -> None:
        if omega < 0:
            raise ValueError(f"guidance.cfg.omega must be >= 0, got {omega}")
        self.omega = omega

    def active(self, i: int, n: int) -> bool:
        return self.omega != 0

    def combine(self, eps_c: Tensor, eps_u: Tensor) -> Tensor:
        return eps_c + self.omega * (eps_c - eps_u)


def l2_distance(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).flatten(1).norm(dim=1)


class FeatureDistance:
    """``||phi(a) - phi(b)||_2`` in a frozen classifier's feature space (``phi(x in [-1,1]) -> [B,D]``)."""

    def __init__(self, extractor: Callable[[Tensor], Tensor]) -> None:
        self.extractor = extractor

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        return (self.extractor(a) - self.extractor(b)).flatten(1).norm(dim=1)


class LPIPSDistance:
    """LPIPS from a local TorchScript file: a module ``(a, b) -> [B]`` (or ``[B,1,1,1]``) on [-1,1] images.

    No weights are downloaded; images below 64 px are upsampled (AlexNet-LPIPS needs >= 64, §4.7)."""

    def __init__(self, path: str, min_size: int = 64) -> None:
        if not path:
            raise ValueError("guidance.minority.distance=lpips needs guidance.minority.lpips_weights (a local file)")
        self.net = torch.jit.load(path, map_location="cpu").eval()
        self.min_size = min_size

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        self.net.to(a.device)
        if a.shape[-1] < self.min_size:
            up = lambda x: torch.nn.functional.interpolate(x, size=self.min_size, mode="bilinear", align_corners=False)  # noqa: E731
            a, b = up(a), up(b)
        if a.shape[1] == 1:
            a, b = a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)
        return self.net(a, b).reshape(a.shape[0], -1).sum(1)


# Registry: name -> factory(feature_extractor=None, lpips_weights="") -> Distance
DISTANCES: dict[str, Callable[..., Distance]] = {
    "l2": lambda extractor=None, lpips_weights="": l2_distance,
    "classifier": lambda extractor=None, lpips_weights="": FeatureDistance(_need_extractor(extractor)),
    "lpips": lambda extractor=None, lpips_weights="": LPIPSDistance(lpips_weights),
}


def _need_extractor(extractor):
    if extractor is None:
        raise ValueError("guidance.minority.distance=classifier needs a classifier (set classifier.checkpoint)")
    return extractor


class MinorityGuidance:
    """Self-guided minority sampling (Um & Ye 2024) in mean space; see the module docstring.

    ``guide`` gets the step's ``x_t`` (a leaf with grad) and its differentiable ``x0_hat``, re-noises the
    detached ``x0_hat`` to ``s`` with per-sample noise, re-denoises without grad, and returns
    ``mean.detach() + scale * var * g / max|g|`` (sign +: ascent on the discrepancy)."""

    space, needs = "mean", ()

    def __init__(self, scale: float, every: int = MINORITY_EVERY, start: float = 0.0, stop: float = 1.0,
                 perturb: float = MINORITY_PERTURB, distance: Distance = l2_distance) -> None:
        if scale < 0 or every < 1 or not 0 <= start <= stop <= 1 or not 0 < perturb < 1:
            raise ValueError("minority guidance: need scale >= 0, every >= 1, 0 <= start <= stop <= 1, 0 < perturb < 1")
        self.scale, self.every, self.start, self.stop = scale, every, start, stop
        self.perturb, self.distance = perturb, distance

    def active(self, i: int, n: int) -> bool:
        """Step i of n (0 = noisiest) is guided when its respaced index ``n-1-i`` is a multiple of ``every``
        (SG-minority's ``t % inter_rate == 0``) and ``i/n`` lies in ``[start, stop)``."""
        if self.scale == 0:
            return False
        frac = i / n
        return ((n - 1 - i) % self.every == 0) and self.start <= frac and (frac < self.stop or self.stop >= 1.0)

    def perturb_t(self, schedule: NoiseSchedule) -> int:
        return min(int(self.perturb * schedule.T), schedule.T - 1)

    def guide(self, mean: Tensor, var: float, x_t: Tensor, x0_hat: Tensor, schedule: NoiseSchedule,
              redenoise: Callable[[Tensor, Tensor], Tensor], noise: Tensor) -> Tensor:
        """``redenoise(x_s, s [B]) -> x0_hat(x_s)`` (the loop's own eps function, no grad); ``noise``: eps' [B,...]."""
        s = torch.full((x_t.shape[0],), self.perturb_t(schedule), device=x_t.device, dtype=torch.long)
        with torch.no_grad():
            x_s = schedule.q_sample(x0_hat.detach(), s, noise)
            target = redenoise(x_s, s)
        with torch.enable_grad():
            loss = self.distance(x0_hat, target).sum()
            (g,) = torch.autograd.grad(loss, x_t)
        g = g / g.flatten(1).abs().amax(1).clamp_min(1e-12).reshape(-1, *([1] * (g.dim() - 1)))
        return mean.detach() + self.scale * var * g


AnyGuidance = Union[ClassifierFree, MinorityGuidance]


def guidance_from_config(gcfg, extractor: Callable[[Tensor], Tensor] | None = None) -> tuple[ClassifierFree | None, MinorityGuidance | None]:
    """(cfg, minority) from the ``guidance`` config section; ``None`` for the ones switched off."""
    cfg = ClassifierFree(gcfg.cfg.omega) if gcfg.cfg.omega > 0 else None
    m = gcfg.minority
    minority = None
    if m.scale > 0:
        dist = DISTANCES[m.distance](extractor=extractor, lpips_weights=m.lpips_weights)
        minority = MinorityGuidance(m.scale, m.every, m.start, m.stop, m.perturb, dist)
    return cfg, minority
