"""The one sampling loop: any stepper of ``STEPPERS`` x any guidances of ``GUIDANCES``.

Per step the loop computes the predictions the active guidances need (the conditional and unconditional
eps in one batched [2B] forward when one needs ``uncond``; on a guided step whose gradient flows through the
conditional rows only, the unconditional rows run as a separate forward without autograd), adds the eps-space guidances' deltas to the
conditional eps, runs the stepper to the posterior ``(mean, std)``, adds the mean-space guidances'
deltas to the mean, then adds ``std * z``. It names no guidance. Gradients through ``x_t`` are tracked
only on steps where an active guidance ``needs_grad``; every grad-free forward (the unguided steps, the
guided steps' re-denoise and unconditional rows) runs under ``inference_mode`` on inference tensors, so a
compiled model (``sample.compile``) has one grad-free graph and one graph with grad.

Noise comes from one generator per sample (seeded from that sample's seed), so image k is the same
whatever the batch split or the worker that draws it. Structure after NVlabs/edm (sampler separate from
the network) and openai/guided-diffusion (guidance acting on eps or on the posterior mean).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..train.allocator import keep_freed_memory
from .guidance import PREDICTIONS, SPACES, EpsContext, MeanContext
from .schedule import NoiseSchedule
from .steppers import make_stepper

SEED_MOD = 2**63 - 1
# CPU GEMM kernels pick a different code path (different rounding) for very small row counts, so every
# forward runs on at least this many rows (padded by repeating the first sample): image k is then
# bit-identical whatever the batch split (measured: rows >= 6 agree on oneDNN/MKL).
MIN_ROWS = 8


def generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    out = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(s) % SEED_MOD)
        out.append(g)
    return out


def per_sample_randn(gens: Sequence[torch.Generator], shape: Sequence[int], device, dtype) -> Tensor:
    """[len(gens), *shape]: row k drawn from generator k only."""
    return torch.stack([torch.randn(tuple(shape), generator=g, device=device, dtype=dtype) for g in gens])


def guidance_seeds(seeds: Sequence[int]) -> list[int]:
    """The seeds of the guidance noise stream of images with ``seeds`` (distinct from every sampler stream)."""
    return [(int(s) * 6_364_136_223_846_793_005 + 1_442_695_040_888_963_407) % SEED_MOD for s in seeds]


def sample_seeds(base: int, n: int, offset: int = 0) -> list[int]:
    """Seeds of images ``offset .. offset+n-1`` of a run with base seed ``base`` (stable, distinct)."""
    return [(base * 1_000_003 + 7919 * (offset + k) + 1) % SEED_MOD for k in range(n)]


@contextmanager
def _eval(model: nn.Module):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _padded(model: nn.Module, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
    B = x.shape[0]
    if B >= MIN_ROWS:
        return model(x, t, y)
    idx = torch.cat([torch.arange(B, device=x.device), torch.zeros(MIN_ROWS - B, dtype=torch.long, device=x.device)])
    return model(x[idx], t[idx], y[idx])[:B]


class EpsFn:
    """The loop's eps function: ``fn(x_t, t, eps_guidances, step, steps) -> eps``.

    Runs the forward passes the given eps-space guidances need (cond + uncond batched into one [2B]
    forward) and adds their deltas to the conditional eps, in order (each sees the running eps).
    ``forwards`` counts model calls. ``schedule`` and ``randn`` are handed to the guidances' contexts;
    :meth:`with_pred` also returns the raw predictions. ``grad_through``: under grad mode, the predictions
    the step's gradient flows through (default: all); when ``uncond`` is not among them, its rows run as a
    separate forward under ``inference_mode`` (their backward would be all zeros)."""

    def __init__(self, model: nn.Module, labels: Tensor, num_classes: int,
                 schedule: NoiseSchedule | None = None, randn: Callable[[], Tensor] | None = None) -> None:
        self.model, self.labels = model, labels
        self.null = torch.full_like(labels, num_classes)
        self.schedule, self.randn = schedule, randn
        self.forwards = 0

    def predict(self, x: Tensor, t: Tensor, needs: set[str],
                grad_through: set[str] | None = None) -> dict[str, Tensor]:
        self.forwards += 1
        if "uncond" not in needs:
            return {"cond": _padded(self.model, x, t, self.labels)}
        if torch.is_grad_enabled() and grad_through is not None and "uncond" not in grad_through:
            self.forwards += 1
            eps_c = _padded(self.model, x, t, self.labels)
            with torch.inference_mode():
                eps_u = _padded(self.model, x.detach().clone(), t, self.null)   # x: an inference tensor
            return {"cond": eps_c, "uncond": eps_u.clone()}   # the clone: a normal tensor again
        out = _padded(self.model, torch.cat([x, x]), torch.cat([t, t]), torch.cat([self.labels, self.null]))
        eps_c, eps_u = out.chunk(2)
        return {"cond": eps_c, "uncond": eps_u}

    def __call__(self, x: Tensor, t: Tensor, eps_guidances: Sequence[Any] = (), step: int = 0,
                 steps: int = 1, needs: set[str] | None = None) -> Tensor:
        return self.with_pred(x, t, eps_guidances, step, steps, needs)[0]

    def with_pred(self, x: Tensor, t: Tensor, eps_guidances: Sequence[Any] = (), step: int = 0,
                  steps: int = 1, needs: set[str] | None = None,
                  grad_through: set[str] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        pred = self.predict(x, t, needs if needs is not None else {k for g in eps_guidances for k in g.needs},
                            grad_through)
        eps = pred["cond"]
        if eps_guidances:
            ctx = EpsContext(x, t, pred, step, steps, eps=eps, schedule=self.schedule,
                             redenoise=_redenoiser(self, self.schedule, eps_guidances, step, steps),
                             randn=self.randn)
            for g in eps_guidances:
                ctx.eps = eps
                eps = eps + g.delta_eps(ctx)
        return eps, pred


COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")  # sample.compile


def for_sampling(model: nn.Module, compile: str = "off") -> nn.Module:
    """``model`` as the sampler runs it (``sample.compile``), in a process that keeps freed memory for reuse
    (:func:`ltaug.train.allocator.keep_freed_memory`): its parameters frozen (``requires_grad=False``, so a
    guided step's backward computes the gradient w.r.t. ``x_t`` alone, never a weight gradient), and unless
    ``compile == "off"`` wrapped in ``torch.compile`` with the mode's inductor options plus ``freezing`` (grad-free graphs
    treat the weights as constants: conv weights prepacked, conv + bias + residual add fused; the guided steps'
    graphs differentiate w.r.t. ``x_t`` through AOTAutograd). The returned module still has ``spec`` and
    ``parameters()``; the weights must not change afterwards. A machine without inductor's C++/Triton toolchain
    fails on the first call (no silent eager fallback)."""
    if compile not in COMPILE_MODES:
        raise ValueError(f"sample.compile: unknown {compile!r}; choose one of {COMPILE_MODES}")
    keep_freed_memory()   # guided steps reuse the freed activations' pages (glibc; see ltaug.train.allocator)
    for p in model.parameters():
        p.requires_grad_(False)
    if compile == "off":
        return model
    from torch._inductor import list_mode_options

    return torch.compile(model, options={**list_mode_options(compile), "freezing": True})


def _check(guidances: Sequence[Any], sampler: str) -> None:
    for g in guidances:
        space = g.space_for(sampler)
        if space not in SPACES:
            raise ValueError(f"{type(g).__name__}: unknown guidance space {space!r}; choose one of {SPACES}")
        bad = set(g.needs) - set(PREDICTIONS)
        if bad:
            raise ValueError(f"{type(g).__name__}: unknown predictions {sorted(bad)}; the loop offers {PREDICTIONS}")


def sample(model: nn.Module, schedule: NoiseSchedule, labels: Tensor, seeds: Sequence[int], scfg: Any, *,
           guidances: Sequence[Any] = (), shape: Sequence[int] | None = None,
           num_classes: int | None = None) -> Tensor:
    """Draw ``len(labels)`` images ``[B,C,H,W]`` in [-1, 1]; image k depends only on (labels[k], seeds[k]).

    ``scfg``: the ``sample`` config section (``sampler``, ``steps``, ``eta``, ``variance``,
    ``clip_denoised``, ``bns_gamma``, ``bns_skip``; the last two default to 1 and 0 when absent). ``guidances``: plug-ins (see :mod:`ltaug.diffusion.guidance`), applied in order
    within their space. ``labels`` may contain ``num_classes`` (the null label) for unconditional
    samples. Device and dtype follow the model's parameters.
    """
    if len(seeds) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(seeds)} seeds")
    guidances = list(guidances)
    _check(guidances, scfg.sampler)
    gamma, skip = float(getattr(scfg, "bns_gamma", 1.0)), int(getattr(scfg, "bns_skip", 0))
    if gamma <= 0:
        raise ValueError(f"sample.bns_gamma must be > 0, got {gamma}")
    if not 0 <= skip < scfg.steps:
        raise ValueError(f"sample.bns_skip must be in [0, sample.steps={scfg.steps}), got {skip}")
    p = next(model.parameters())
    device, dtype = p.device, p.dtype
    spec_m = getattr(model, "spec", None)
    if shape is None:
        shape = (spec_m.in_channels, spec_m.image_size, spec_m.image_size)
    C = num_classes if num_classes is not None else spec_m.num_classes
    labels = labels.to(device=device, dtype=torch.long)
    gens = generators(seeds, device)
    grid = schedule.respace(scfg.steps)
    stepper = make_stepper(scfg.sampler, grid, eta=scfg.eta, variance=scfg.variance,
                           clip_denoised=scfg.clip_denoised)
    n = len(grid)
    randn: Callable[[], Tensor] = lambda: per_sample_randn(gens, shape, device, dtype)  # noqa: E731
    # Guidance noise (minority guidance's re-noising) comes from its own per-image stream, so the sampler's own
    # noise (x_T and every step's) is the same with and without guidance: scale -> 0 converges to unguided.
    guide_gens: list[torch.Generator] = []

    def guide_randn() -> Tensor:
        if not guide_gens:
            guide_gens.extend(generators(guidance_seeds(seeds), device))
        return per_sample_randn(guide_gens, shape, device, dtype)
    eps_fn = EpsFn(model, labels, C, schedule, guide_randn)
    # Steps without a grad-needing guidance run under inference_mode (no autograd, no version counters or view
    # tracking), on inference tensors from x_T on (a compiled model then sees one kind of input on every
    # grad-free call); a guided step first copies x_t out of it (an inference tensor cannot become a leaf).
    with torch.inference_mode():
        x = randn()
        if gamma != 1.0:
            x = gamma * x   # BnS boosted x_T
    with _eval(model):
        for i in range(skip, n):
            t = torch.full((len(labels),), grid.t[i], device=device, dtype=torch.long)
            on = [g for g in guidances if g.active(i, n)]
            on_eps = [g for g in on if g.space_for(scfg.sampler) == "eps"]
            on_mean = [g for g in on if g.space_for(scfg.sampler) == "mean"]
            grad = any(g.needs_grad for g in on)
            through = {p for g in on if g.needs_grad for p in g.grad_through()}
            x_in = x.clone().requires_grad_(True) if grad else x
            with torch.enable_grad() if grad else torch.inference_mode():
                eps, pred = eps_fn.with_pred(x_in, t, on_eps, i, n, grad_through=through)
                mean, std = stepper.step(i, x_in, eps)
                if on_mean:
                    ctx = MeanContext(
                        x_t=x_in, t=t, eps=eps, x0_hat=schedule.eps_to_x0(x_in, t, eps), mean=mean,
                        var=stepper.guidance_variance(i), schedule=schedule,
                        redenoise=_redenoiser(eps_fn, schedule, on_eps, i, n), randn=guide_randn, step=i, steps=n,
                        pred=pred)
                    for g in on_mean:
                        mean = mean.detach() + g.delta_mean(ctx)
            with torch.inference_mode():   # x_{t-1}: an inference tensor after guided steps too
                x = mean.detach() + std * randn() if i < n - 1 and std > 0 else mean.detach().clone()
    return x.clamp(-1, 1)   # outside inference_mode: a normal tensor


def _redenoiser(eps_fn: EpsFn, schedule: NoiseSchedule, on_eps: Sequence[Any], i: int, n: int):
    """``redenoise(x_s, s, guided=True)``: x0_hat of the loop's eps at ``(x_s, s)`` without grad; ``guided``
    applies the step's grad-free eps-space guidances (never a grad-needing one: no recursion)."""
    free = [g for g in on_eps if not g.needs_grad]

    def redenoise(x_s: Tensor, s: Tensor, guided: bool = True) -> Tensor:
        with torch.inference_mode():   # inference tensors in, as on the grad-free steps (one compiled graph)
            x_s = x_s.detach().clone()
            x0 = schedule.eps_to_x0(x_s, s, eps_fn(x_s, s, free if guided else (), i, n))
        return x0.clone()   # a normal tensor: the guidance's distance may save it for backward
    return redenoise


def sample_batched(model: nn.Module, schedule: NoiseSchedule, labels: Tensor, seeds: Sequence[int], scfg: Any, *,
                   batch_size: int | None = None, **kw) -> Tensor:
    """:func:`sample` over chunks of ``batch_size`` (default ``scfg.batch_size``); the same images as one call."""
    bs = batch_size or scfg.batch_size
    outs = [sample(model, schedule, labels[a:a + bs], list(seeds[a:a + bs]), scfg, **kw)
            for a in range(0, len(labels), bs)]
    return torch.cat(outs) if outs else torch.empty(0)
