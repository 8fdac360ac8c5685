"""Guidance plug-ins for the one sampling loop (:func:`ltaug.diffusion.sample.sample`).

- :class:`ClassifierFree` (Ho & Salimans 2021; CBDM convention ``eps + omega (eps_c - eps_u)``,
  algorithms.md §1.2) acts in eps space and needs the unconditional prediction.
- :class:`MinorityGuidance` (self-guided minority sampling, Um & Ye, ECCV 2024, §4.2-4.3): with
  ``g = grad_{x_t} D(x0_hat(x_t), sg x0_hat(x_s))`` (``x_s`` re-noises ``x0_hat`` to ``s = perturb * T``) and
  ``g_hat = g / max|g|`` per sample, it acts in one of two spaces (``space``):

  * ``mean``: ``mean += w * Sigma_t * g_hat`` (the reference's ``mg_scale_type='var'``, written for
    ancestral DDPM; under DDIM Sigma_t is the grid's fixedlarge variance, which has no reference);
  * ``eps``: ``eps += -sqrt(1 - ab_t) * w * g_hat`` -- classifier guidance in eps space (Dhariwal &
    Nichol 2021, Alg. 2) with ``grad log p := w g_hat``. Derivation of the match: the DDPM mean is
    ``mu = c0 x0_hat + c1 x_t`` with ``c0 = beta_t sqrt(ab_prev) / (1 - ab_t)`` and ``x0_hat = (x_t -
    sqrt(1-ab_t) eps) / sqrt(ab_t)``, so ``d mu / d eps = -c0 sqrt(1-ab_t) / sqrt(ab_t)`` and the eps delta
    moves the mean by ``c0 (1-ab_t) / sqrt(ab_t) w g_hat = beta_t / sqrt(alpha_t) w g_hat``: the mean form
    with Sigma_t = beta_t (fixedlarge) up to ``1/sqrt(alpha_t) = 1 + O(beta_t)``. Same sign (ascent on D),
    same scale to first order. Under DDIM the eps delta enters ``x0_hat`` and the direction term
    coherently (and passes through ``clip_denoised``), which keeps the deterministic trajectory on the
    model's manifold; to first order it moves the DDIM mean by ``beta_t / 2 * w g_hat`` (the probability-
    flow ODE's half score).
  * ``auto`` (default): ``eps`` under DDIM, ``mean`` under DDPM (the reference's own sampler).

  ``target`` picks the ``x0_hat`` the discrepancy is computed on: ``cond`` (default) the conditional
  model's prediction, re-denoised by the conditional model; ``guided`` the prediction after the step's
  other eps-space guidances (the CFG-extrapolated one), re-denoised with them. CFG always applies to
  the step itself. The guidance reuses the step's own forward pass (run with grad on guided steps).

A guidance declares the predictions the loop must compute for it (``needs``: ``"uncond"``), the ``space``
it acts in (``eps``: it returns a delta added to the conditional eps; ``mean``: a delta added to the
stepper's posterior mean; :meth:`Guidance.space_for` resolves it per sampler), whether it needs
gradients through ``x_t`` (``needs_grad``) and when it is active (a shared :class:`Window`). The loop
applies the active ones by space and names none of them. Adding a guidance is one class, one line in
:data:`GUIDANCES` and one config section ``guidance.<name>``.

Discrepancies ``D`` (registry :data:`DISTANCES`): ``l2`` (the reference fallback, p = 2), ``classifier``
(L2 in a frozen classifier's feature space, a perceptual distance without downloads) and ``lpips``
(a local TorchScript LPIPS module; nothing is downloaded). ``auto`` (the config default) is
``classifier`` when a classifier is given (generation with ``classifier.checkpoint``), else ``l2``.
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
MINORITY_SPACES = ("auto", "eps", "mean")   # auto: eps under DDIM, mean under DDPM
MINORITY_TARGETS = ("cond", "guided")
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
    """What an eps-space guidance gets: ``pred["cond"]`` (always) and the predictions it ``needs``.

    ``eps`` is the running eps (the conditional one plus the deltas of the eps-space guidances applied
    before this one); ``x_t`` is a leaf with grad on steps where an active guidance ``needs_grad``;
    ``redenoise(x_s, s [B], guided) -> x0_hat(x_s)`` without grad (``guided``: with the step's grad-free
    eps-space guidances, else the conditional model only); ``randn()`` draws per-sample noise."""

    x_t: Tensor                 # [B,C,H,W]
    t: Tensor                   # [B] training timesteps
    pred: Mapping[str, Tensor]  # "cond" -> eps_c [B,...]; "uncond" -> eps_u when asked for
    step: int                   # i of n (0 = noisiest)
    steps: int
    eps: Tensor | None = None
    schedule: NoiseSchedule | None = None
    redenoise: Callable[[Tensor, Tensor, bool], Tensor] | None = None
    randn: Callable[[], Tensor] | None = None


@dataclass
class MeanContext:
    """What a mean-space guidance gets after the stepper ran.

    ``x_t`` is a leaf with ``requires_grad`` on steps where an active guidance ``needs_grad`` (``x0_hat``,
    ``eps`` and ``pred`` are then differentiable in it); ``var`` is the stepper's guidance variance;
    ``redenoise(x_s, s [B], guided=True) -> x0_hat(x_s)`` uses the loop's own eps function without grad
    (``guided``: with the step's grad-free eps-space guidances, else the conditional model only);
    ``randn()`` draws ``[B,C,H,W]`` noise, row k from sample k's generator; ``pred`` holds the raw
    predictions (``"cond"``, and ``"uncond"`` when computed)."""

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
    pred: Mapping[str, Tensor] | None = None


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

    def space_for(self, sampler: str) -> str:
        """The space this guidance acts in under ``sampler`` (``ddpm`` / ``ddim``); default: ``space``."""
        return self.space

    def grad_through(self) -> tuple[str, ...]:
        """For a ``needs_grad`` guidance: the predictions (``"cond"`` and those of :data:`PREDICTIONS`) its
        gradient w.r.t. ``x_t`` flows through. The loop runs the others' rows without autograd. Default: all of
        them (always correct; a subclass narrows it only where its maths allows)."""
        return ("cond", *PREDICTIONS)

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


FEATURE_MIN_ROWS = 8  # as sample.MIN_ROWS: CPU kernels round differently for very small row counts


class FeatureDistance:
    """``||phi(a) - phi(b)||_2`` in a frozen classifier's feature space (``phi(x in [-1,1]) -> [B,D]``).

    ``a`` and ``b`` go through ``phi`` as one batch padded to at least 8 rows (repeating the first), so
    sample k's distance does not depend on the batch split (the default distance when a classifier is given)."""

    def __init__(self, extractor: Callable[[Tensor], Tensor]) -> None:
        self.extractor = extractor

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        B = a.shape[0]
        x = torch.cat([a, b.to(a)])
        if x.shape[0] < FEATURE_MIN_ROWS:
            x = torch.cat([x, x[:1].expand(FEATURE_MIN_ROWS - x.shape[0], *x.shape[1:])])
        phi = self.extractor(x)
        return (phi[:B] - phi[B:2 * B]).flatten(1).norm(dim=1)


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


def resolve_distance(name: str, has_classifier: bool) -> str:
    """``guidance.minority.distance`` as used: ``auto`` is ``classifier`` when a classifier is given, else ``l2``."""
    if name == "auto":
        return "classifier" if has_classifier else "l2"
    if name not in DISTANCES:
        raise ValueError(f"guidance.minority.distance: unknown {name!r}; choose auto or one of {sorted(DISTANCES)}")
    return name


def wants_classifier(section: Any, has_checkpoint: bool) -> bool:
    """Whether minority guidance ``section`` uses a classifier: ``distance=classifier``, or ``auto`` with one."""
    return section.scale > 0 and (section.distance == "classifier" or (section.distance == "auto" and has_checkpoint))


# Registry: name -> factory(extractor=None, lpips_weights="") -> Distance
DISTANCES: dict[str, Callable[..., Distance]] = {
    "l2": lambda extractor=None, lpips_weights="": l2_distance,
    "classifier": lambda extractor=None, lpips_weights="": FeatureDistance(_need_extractor(extractor)),
    "lpips": lambda extractor=None, lpips_weights="": LPIPSDistance(lpips_weights),
}


# ---------------------------------------------------------------------- minority (Um & Ye, ECCV 2024)
class MinorityGuidance(Guidance):
    """Self-guided minority sampling (Um & Ye 2024); see the module docstring for the two spaces.

    On a guided step it takes the step's differentiable ``x0_hat`` (of ``target``), re-noises its detached
    copy to ``s`` with per-sample noise, re-denoises without grad, and differentiates the discrepancy
    w.r.t. ``x_t``: ``g_hat = g / max|g|``. ``space=mean`` returns ``scale * var * g_hat`` (a mean delta);
    ``space=eps`` returns ``-sqrt(1 - ab_t) * scale * g_hat`` (an eps delta); ``auto`` picks eps under
    DDIM and mean under DDPM."""

    needs, needs_grad, scale_key = (), True, "scale"

    def __init__(self, scale: float, window: Window = Window(every=MINORITY_EVERY),
                 perturb: float = MINORITY_PERTURB, distance: Distance = l2_distance, *,
                 space: str = "auto", target: str = "cond") -> None:
        if scale < 0 or not 0 < perturb < 1:
            raise ValueError("minority guidance: need scale >= 0 and 0 < perturb < 1")
        if space not in MINORITY_SPACES:
            raise ValueError(f"guidance.minority.space: unknown {space!r}; choose one of {MINORITY_SPACES}")
        if target not in MINORITY_TARGETS:
            raise ValueError(f"guidance.minority.target: unknown {target!r}; choose one of {MINORITY_TARGETS}")
        self.scale, self.window = float(scale), window
        self.perturb, self.distance = perturb, distance
        self.space, self.target = space, target

    def space_for(self, sampler: str) -> str:
        if self.space != "auto":
            return self.space
        return "eps" if sampler == "ddim" else "mean"

    def grad_through(self) -> tuple[str, ...]:
        """``target=cond`` differentiates the conditional x0_hat only; ``guided`` the running (CFG'd) eps."""
        return ("cond",) if self.target == "cond" else ("cond", *PREDICTIONS)

    @classmethod
    def from_config(cls, section: Any, *, extractor: Callable[[Tensor], Tensor] | None = None,
                    **context: Any) -> "MinorityGuidance":
        """``extractor``: the frozen classifier's features (``distance=classifier``, and ``auto`` with one)."""
        name = resolve_distance(section.distance, extractor is not None)
        dist = DISTANCES[name](extractor=extractor, lpips_weights=section.lpips_weights)
        return cls(section.scale, Window.from_config(section), section.perturb, dist,
                   space=section.space, target=section.target)

    def perturb_t(self, schedule: NoiseSchedule) -> int:
        return min(int(self.perturb * schedule.T), schedule.T - 1)

    def direction(self, x_t: Tensor, x0_hat: Tensor, schedule: NoiseSchedule, redenoise, randn) -> Tensor:
        """``g_hat = g / max|g|`` per sample, ``g = grad_{x_t} D(x0_hat, sg x0_hat(x_s))``."""
        noise = randn()  # eps' [B,...]
        s = torch.full((x_t.shape[0],), self.perturb_t(schedule), device=x_t.device, dtype=torch.long)
        with torch.no_grad():
            x_s = schedule.q_sample(x0_hat.detach(), s, noise)
            target = redenoise(x_s, s, self.target == "guided")
        with torch.enable_grad():
            loss = self.distance(x0_hat, target).sum()
            (g,) = torch.autograd.grad(loss, x_t, retain_graph=True)  # another guidance may need the graph
        return g / g.flatten(1).abs().amax(1).clamp_min(1e-12).reshape(-1, *([1] * (g.dim() - 1)))

    def delta_mean(self, ctx: MeanContext) -> Tensor:
        x0_hat = (ctx.x0_hat if self.target == "guided" or ctx.pred is None
                  else ctx.schedule.eps_to_x0(ctx.x_t, ctx.t, ctx.pred["cond"]))
        return self.scale * ctx.var * self.direction(ctx.x_t, x0_hat, ctx.schedule, ctx.redenoise, ctx.randn)

    def delta_eps(self, ctx: EpsContext) -> Tensor:
        sch = ctx.schedule
        eps = ctx.eps if self.target == "guided" and ctx.eps is not None else ctx.pred["cond"]
        x0_hat = sch.eps_to_x0(ctx.x_t, ctx.t, eps)
        g_hat = self.direction(ctx.x_t, x0_hat, sch, ctx.redenoise, ctx.randn)
        return -(1 - sch.at(sch.alpha_bar, ctx.t, ctx.x_t)).sqrt() * self.scale * g_hat


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
           "MINORITY_PERTURB", "MINORITY_EVERY", "SPACES", "PREDICTIONS", "MINORITY_SPACES", "MINORITY_TARGETS",
           "resolve_distance", "wants_classifier"]
