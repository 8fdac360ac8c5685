"""The one sampling loop (DDPM / DDIM x classifier-free x minority self-guidance).

Noise comes from one generator per sample (seeded from that sample's seed), so image k is the same
whatever the batch split or the worker that draws it. Structure after NVlabs/edm (sampler separate from
the network) and openai/guided-diffusion (guidance acting on eps or on the posterior mean).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from .guidance import ClassifierFree, MinorityGuidance
from .schedule import NoiseSchedule
from .steppers import make_stepper

SEED_MOD = 2**63 - 1
# CPU GEMM kernels pick a different code path (different rounding) for very small row counts, so every
# forward runs on at least this many rows (padded by repeating the first sample): image k is then
# bit-identical whatever the batch split (measured: rows >= 6 agree on oneDNN/MKL).
MIN_ROWS = 8


@dataclass(frozen=True)
class SamplerSpec:
    sampler: str = "ddim"          # ddpm | ddim
    steps: int = 50
    eta: float = 0.0
    variance: str = "fixedlarge"
    clip_denoised: bool = False    # CBDM clips only the returned image

    @staticmethod
    def from_config(scfg) -> "SamplerSpec":
        return SamplerSpec(scfg.sampler, scfg.steps, scfg.eta, scfg.variance, scfg.clip_denoised)


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


class EpsFn:
    """``eps(x_t, t)`` of a conditional model with optional classifier-free guidance (one [2B] forward)."""

    def __init__(self, model: nn.Module, labels: Tensor, num_classes: int, cfg: ClassifierFree | None) -> None:
        self.model, self.labels, self.cfg = model, labels, cfg
        self.null = torch.full_like(labels, num_classes)
        self.forwards = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.forwards += 1
        if self.cfg is None or self.cfg.omega == 0:
            return _padded(self.model, x, t, self.labels)
        out = _padded(self.model, torch.cat([x, x]), torch.cat([t, t]), torch.cat([self.labels, self.null]))
        eps_c, eps_u = out.chunk(2)
        return self.cfg.combine(eps_c, eps_u)


def _padded(model: nn.Module, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
    B = x.shape[0]
    if B >= MIN_ROWS:
        return model(x, t, y)
    idx = torch.cat([torch.arange(B, device=x.device), torch.zeros(MIN_ROWS - B, dtype=torch.long, device=x.device)])
    return model(x[idx], t[idx], y[idx])[:B]


def sample(model: nn.Module, schedule: NoiseSchedule, labels: Tensor, seeds: Sequence[int],
           spec: SamplerSpec = SamplerSpec(), *, shape: Sequence[int] | None = None,
           cfg: ClassifierFree | None = None, minority: MinorityGuidance | None = None,
           num_classes: int | None = None) -> Tensor:
    """Draw ``len(labels)`` images ``[B,C,H,W]`` in [-1, 1]; image k depends only on (labels[k], seeds[k]).

    ``labels`` may contain ``num_classes`` (the null label) for unconditional samples. Device and dtype
    follow the model's parameters.
    """
    if len(seeds) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(seeds)} seeds")
    p = next(model.parameters())
    device, dtype = p.device, p.dtype
    spec_m = getattr(model, "spec", None)
    if shape is None:
        shape = (spec_m.in_channels, spec_m.image_size, spec_m.image_size)
    C = num_classes if num_classes is not None else spec_m.num_classes
    labels = labels.to(device=device, dtype=torch.long)
    gens = generators(seeds, device)
    grid = schedule.respace(spec.steps)
    stepper = make_stepper(spec.sampler, grid, eta=spec.eta, variance=spec.variance,
                           clip_denoised=spec.clip_denoised)
    eps_fn = EpsFn(model, labels, C, cfg)
    n = len(grid)
    x = per_sample_randn(gens, shape, device, dtype)
    # Unguided runs never need autograd: inference_mode also skips version counters and view tracking.
    # (Guided runs need no_grad: inference tensors cannot later become leaves with requires_grad.)
    with _eval(model), (torch.inference_mode() if minority is None else torch.no_grad()):
        for i, t_i in enumerate(grid.t):
            t = torch.full((len(labels),), t_i, device=device, dtype=torch.long)
            guided = minority is not None and minority.active(i, n)
            if guided:
                x_in = x.detach().requires_grad_(True)
                with torch.enable_grad():
                    eps = eps_fn(x_in, t)
                    mean, std = stepper.step(i, x_in, eps)
                    x0_hat = schedule.eps_to_x0(x_in, t, eps)
                    noise_s = per_sample_randn(gens, shape, device, dtype)
                    redenoise = lambda xs, s: schedule.eps_to_x0(xs, s, eps_fn(xs, s))  # noqa: E731
                    mean = minority.guide(mean, stepper.guidance_variance(i), x_in, x0_hat, schedule,
                                          redenoise, noise_s)
            else:
                eps = eps_fn(x, t)
                mean, std = stepper.step(i, x, eps)
            if i < n - 1 and std > 0:
                x = mean.detach() + std * per_sample_randn(gens, shape, device, dtype)
            else:
                x = mean.detach()
    return x.clamp(-1, 1)


def sample_batched(model: nn.Module, schedule: NoiseSchedule, labels: Tensor, seeds: Sequence[int],
                   spec: SamplerSpec = SamplerSpec(), batch_size: int = 64, **kw) -> Tensor:
    """:func:`sample` over chunks of ``batch_size`` (the same images as one call)."""
    outs = [sample(model, schedule, labels[a:a + batch_size], list(seeds[a:a + batch_size]), spec, **kw)
            for a in range(0, len(labels), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)
