"""Guidance plug-ins for the one sampling loop (:func:`ltaug.diffusion.sample.sample`).

- :class:`ClassifierFree` (Ho & Salimans 2021; CBDM convention ``eps + omega (eps_c - eps_u)``,
  algorithms.md §1.2) acts in eps space and needs the unconditional prediction.
- :class:`MinorityGuidance` (self-guided minority sampling, Um & Ye, ECCV 2024, §4.2-4.3) acts in mean
  space: ``mean += w * Sigma_t * g / max|g|`` with ``g = grad_{x_t} D(x0_hat(x_t), sg x0_hat(x_s))``,
  where ``x_s`` re-noises ``x0_hat`` to ``s = perturb * T``. It reuses the step's own forward pass
  (run with grad on guided steps) and works under DDPM and DDIM.

A guidance declares the predictions the loop must compute for it (``needs``: ``"uncond"``), the ``space``
it acts in (``eps``: it returns a delta added to the conditional eps; ``mean``: a delta added to the
stepper's posterior mean), whether it needs gradients through ``x_t`` (``needs_grad``) and when it is
active (a shared :class:`Window`). The loop applies the active ones by space and names none of them.
Adding a guidance is one class, one line in :data:`GUIDANCES` and one config section ``guidance.<name>``.

Discrepancies ``D`` (registry :data:`DISTANCES`): ``l2`` (the reference fallback, p = 2), ``classifier``
(L2 in a frozen classifier's feature space, a perceptual distance without downloads) and ``lpips``
(a local TorchScript LPIPS module; nothing is downloaded).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import Tensor

from .schedule import NoiseSchedule

MINORITY_PERTURB = 0.8  # s = 0.8 T (SG-minority p_ratio)
MINORITY_EVERY = 5      # inter_rate (SG-minority default)

SPACES = ("eps", "mean")
PREDICTIONS = ("uncond",)  # what a guidance may ask the loop for, besides the conditional eps

Distance = Callable[[Tensor, Tensor], Tensor]  # (x0_hat [B,...] with grad, target [B,...]) -> [B]


# ---------------------------------------------------------------------------------------- the window
@dataclass(frozen=True)
class Window:
    """When a guidance acts: step i of n (0 = noisiest) is inside when ``i/n`` lies in ``[start, stop)``
    (``stop = 1`` includes the last step) and its respaced index ``n-1-i`` is a multiple of ``every``
    (SG-minority's ``t % inter_rate == 0``). The default window is every step."""

    start: float = 0.0
    stop: float = 1.0
    every: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.start <= self.stop <= 1.0 or self.every < 1:
            raise ValueError(f"guidance window: need 0 <= start <= stop <= 1 and every >= 1, got {self}")

    @staticmethod
    def from_config(section: Any) -> "Window":
        """From a config section with ``start``, ``stop`` and ``every``."""
        return Window(float(section.start), float(section.stop), int(section.every))

    def active(self, i: int, n: int) -> bool:
        frac = i / n
        return ((n - 1 - i) % self.every == 0) and self.start <= frac and (frac < self.stop or self.stop >= 1.0)


# ---------------------------------------------------------------------------------- what guidances see
@dataclass
class EpsContext:
    """What an eps-space guidance gets: ``pred["cond"]`` (always) and the predictions it ``needs``."""

    x_t: Tensor                 # [B,C,H,W]
    t: Tensor                   # [B] training timesteps
    pred: Mapping[str, Tensor]  # "cond" -> eps_c [B,...]; "uncond" -> eps_u when asked for
    step: int                   # i of n (0 = noisiest)
    steps: int


@dataclass
class MeanContext:
    """What a mean-space guidance gets after the stepper ran.

    ``x_t`` is a leaf with ``requires_grad`` on steps where an active guidance ``needs_grad`` (``x0_hat``
    and ``eps`` are then differentiable in it); ``var`` is the stepper's guidance variance;
    ``redenoise(x_s, s [B]) -> x0_hat(x_s)`` uses the loop's own eps function (eps-space guidance
    included) without grad; ``randn()`` draws ``[B,C,H,W]`` noise, row k from sample k's generator."""

    x_t: Tensor
    t: Tensor
    eps: Tensor
    x0_hat: Tensor
    mean: Tensor
    var: float
    schedule: NoiseSchedule
    redenoise: Callable[[Tensor, Tensor], Tensor]
    randn: Callable[[], Tensor]
    step: int
    steps: int


class Guidance:
    """Base of the plug-ins: subclasses set the class attributes and implement ``from_config`` and
    ``delta_eps`` (space ``eps``) or ``delta_mean`` (space ``mean``). ``scale == 0`` is never active."""

    space: ClassVar[str] = "eps"
    needs: ClassVar[tuple[str, ...]] = ()
    needs_grad: ClassVar[bool] = False
    scale_key: ClassVar[str] = "scale"     # the config key whose value 0 switches the guidance off

    scale: float
    window: Window

    def active(self, i: int, n: int) -> bool:
        return self.scale != 0 and self.window.active(i, n)

    @classmethod
    def switched_on(cls, section: Any) -> bool:
        return getattr(section, cls.scale_key) > 0

    @classmethod
    def from_config(cls, section: Any, **context: Any) -> "Guidance":
        raise NotImplementedError

    def delta_eps(self, ctx: EpsContext) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not act in eps space")

    def delta_mean(self, ctx: MeanContext) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not act in mean space")


# ------------------------------------------------------------------------ classifier-free (Ho & Salimans)
class ClassifierFree(Guidance):
    """``eps_c + omega (eps_c - eps_u)``; omega = 0 is plain conditional sampling."""

    space, needs, needs_grad, scale_key = "eps", ("uncond",), False, "omega"

    def __init__(self, omega: float, window: Window = Window()) -> None:
        if omega < 0:
            raise ValueError(f"guidance.cfg.omega must be >= 0, got {omega}")
        self.scale, self.window = float(omega), window

    @property
    def omega(self) -> float:
        return self.scale

    @classmethod
    def from_config(cls, section: Any, **context: Any) -> "ClassifierFree":
        return cls(section.omega, Window.from_config(section))

    def delta_eps(self, ctx: EpsContext) -> Tensor:
        return self.scale * (ctx.pred["cond"] - ctx.pred["uncond"])


# ----------------------------------------------------------------------------------------- distances
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


def _need_extractor(extractor):
    if extractor is None:
        raise ValueError("guidance.minority.distance=classifier needs a classifier (set classifier.checkpoint)")
    return extractor


# Registry: name -> factory(extractor=None, lpips_weights="") -> Distance
DISTANCES: dict[str, Callable[..., Distance]] = {
    "l2": lambda extractor=None, lpips_weights="": l2_distance,
    "classifier": lambda extractor=None, lpips_weights="": FeatureDistance(_need_extractor(extractor)),
    "lpips": lambda extractor=None, lpips_weights="": LPIPSDistance(lpips_weights),
}


# ---------------------------------------------------------------------- minority (Um & Ye, ECCV 2024)
class MinorityGuidance(Guidance):
    """Self-guided minority sampling (Um & Ye 2024) in mean space; see the module docstring.

    ``delta_mean`` gets the step's ``x_t`` (a leaf with grad) and its differentiable ``x0_hat``, re-noises
    the detached ``x0_hat`` to ``s`` with per-sample noise, re-denoises without grad, and returns
    ``scale * var * g / max|g|`` (sign +: ascent on the discrepancy)."""

    space, needs, needs_grad, scale_key = "mean", (), True, "scale"

    def __init__(self, scale: float, window: Window = Window(every=MINORITY_EVERY),
                 perturb: float = MINORITY_PERTURB, distance: Distance = l2_distance) -> None:
        if scale < 0 or not 0 < perturb < 1:
            raise ValueError("minority guidance: need scale >= 0 and 0 < perturb < 1")
        self.scale, self.window = float(scale), window
        self.perturb, self.distance = perturb, distance

    @classmethod
    def from_config(cls, section: Any, *, extractor: Callable[[Tensor], Tensor] | None = None,
                    **context: Any) -> "MinorityGuidance":
        """``extractor``: the frozen classifier's features (``distance=classifier``)."""
        dist = DISTANCES[section.distance](extractor=extractor, lpips_weights=section.lpips_weights)
        return cls(section.scale, Window.from_config(section), section.perturb, dist)

    def perturb_t(self, schedule: NoiseSchedule) -> int:
        return min(int(self.perturb * schedule.T), schedule.T - 1)

    def delta_mean(self, ctx: MeanContext) -> Tensor:
        x_t, x0_hat = ctx.x_t, ctx.x0_hat
        noise = ctx.randn()  # eps' [B,...]
        s = torch.full((x_t.shape[0],), self.perturb_t(ctx.schedule), device=x_t.device, dtype=torch.long)
        with torch.no_grad():
            x_s = ctx.schedule.q_sample(x0_hat.detach(), s, noise)
            target = ctx.redenoise(x_s, s)
        with torch.enable_grad():
            loss = self.distance(x0_hat, target).sum()
            (g,) = torch.autograd.grad(loss, x_t, retain_graph=True)  # another guidance may need the graph
        g = g / g.flatten(1).abs().amax(1).clamp_min(1e-12).reshape(-1, *([1] * (g.dim() - 1)))
        return self.scale * ctx.var * g


# ------------------------------------------------------------------------------------------ registry
# name -> class; the name is also the config section ``guidance.<name>``. Registry order is build order.
GUIDANCES: dict[str, type] = {
    "cfg": ClassifierFree,
    "minority": MinorityGuidance,
}


def guidances_from_config(gcfg: Any, *, extractor: Callable[[Tensor], Tensor] | None = None) -> list:
    """Every guidance of :data:`GUIDANCES` (in registry order) whose section ``gcfg.<name>`` is switched on
    (its scale > 0), built by the class's ``from_config`` with the given context."""
    out = []
    for name, cls in GUIDANCES.items():
        section = getattr(gcfg, name)
        if cls.switched_on(section):
            out.append(cls.from_config(section, extractor=extractor))
    return out


__all__ = ["GUIDANCES", "Guidance", "Window", "EpsContext", "MeanContext", "ClassifierFree", "MinorityGuidance",
           "DISTANCES", "FeatureDistance", "LPIPSDistance", "l2_distance", "guidances_from_config",
           "MINORITY_PERTURB", "MINORITY_EVERY", "SPACES", "PREDICTIONS"]
