"""Tiny seeded models for the diffusion tests (imported by module name: tests are not a package)."""
from __future__ import annotations

import torch
from torch import nn

from ltaug.diffusion import NoiseSchedule, SimpleFeatureSpace, UNet, UNetSpec

MICRO = dict(in_channels=1, image_size=8, num_classes=3, ch=8, ch_mult=(1, 2), num_res_blocks=1,
             attn_resolutions=(4,), dropout=0.0, num_heads=1, groups=4)


def micro_unet(seed: int = 0, scale: float = 0.05, **kw) -> UNet:
    """A seeded micro UNet whose zero-initialised layers are randomised (so every path is live)."""
    torch.manual_seed(seed)
    m = UNet(UNetSpec(**{**MICRO, **kw}))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    for name, mod in m.named_modules():
        if isinstance(mod, nn.GroupNorm):
            with torch.no_grad():
                mod.weight.fill_(1.0)
                mod.bias.zero_()
    return m


class TinyFeatureNet(nn.Module):
    """A frozen random conv net: x [B,C,H,W] in [-1,1] -> features [B,D]."""

    def __init__(self, channels: int = 1, dim: int = 6, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(channels, dim, 3, padding=1)
        for p in self.parameters():
            p.requires_grad_(False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x)).mean(dim=(2, 3))




class GaussianPlusUNet(nn.Module):
    """eps = sqrt(1 - ab_t) x_t + 0.1 unet(x_t, t, y): the exact denoiser of N(0, I) data plus a seeded
    UNet perturbation, so short sampling loops give unsaturated images (informative golden values)."""

    def __init__(self, unet: UNet, alpha_bar: torch.Tensor) -> None:
        super().__init__()
        self.unet, self.spec = unet, unet.spec
        self.register_buffer("ab", alpha_bar.float())

    def forward(self, x, t, y=None, return_features=False):
        c = (1 - self.ab[t]).sqrt().reshape(-1, 1, 1, 1).to(x)
        return c * x + 0.1 * self.unet(x, t, y)


class GaussianDenoiser(nn.Module):
    """An analytic, architecture-free denoiser: the exact ``E[eps | x_t]`` when class y's data is
    ``x0 ~ N(mu_y, sigma_y^2 I)``. The null label (``num_classes``, or ``y=None``) gives the exact eps of
    the class mixture with prior ``prior``: ``sum_y r_y(x_t) eps_y(x_t)`` with the posterior responsibilities
    ``r_y``. With ``v = ab sigma^2 + 1 - ab``: ``eps_y = sqrt(1 - ab) (x_t - sqrt(ab) mu_y) / v``.

    Sampler goldens on it cannot move with a UNet refactor (diffusers tests its schedulers the same way)."""

    def __init__(self, alpha_bar: torch.Tensor, mu: torch.Tensor, sigma, prior) -> None:
        super().__init__()
        from types import SimpleNamespace

        K, C, H, W = mu.shape
        self.anchor = nn.Parameter(torch.zeros(()))  # device / dtype anchor for the sampling loop
        self.register_buffer("ab", alpha_bar.float())
        self.register_buffer("mu", mu.float())
        self.register_buffer("sigma", torch.as_tensor(sigma, dtype=torch.float32))
        p = torch.as_tensor(prior, dtype=torch.float32)
        self.register_buffer("log_prior", (p / p.sum()).log())
        self.spec = SimpleNamespace(in_channels=C, image_size=H, num_classes=K)

    def forward(self, x, t, y=None, return_features=False):
        K = self.mu.shape[0]
        ab = self.ab[t].to(x).reshape(-1, 1)                                  # [B,1]
        v = ab * self.sigma.to(x).pow(2) + (1 - ab)                          # [B,K]
        diff = x[:, None] - ab.sqrt()[..., None, None, None] * self.mu.to(x)[None]   # [B,K,C,H,W]
        eps_k = (1 - ab).sqrt()[..., None, None, None] * diff / v[..., None, None, None]
        D = x[0].numel()
        logp = self.log_prior.to(x) - 0.5 * D * v.log() - 0.5 * diff.pow(2).flatten(2).sum(-1) / v
        eps_u = (logp.softmax(1)[..., None, None, None] * eps_k).sum(1)
        if y is None:
            return eps_u
        y = y.to(x.device).long()
        cond = eps_k[torch.arange(len(y), device=x.device), y.clamp(max=K - 1)]
        return torch.where((y < K).reshape(-1, 1, 1, 1), cond, eps_u)


def gaussian_classes(K: int = 3, C: int = 1, size: int = 8) -> tuple[torch.Tensor, list[float], list[float]]:
    """Closed-form class means (cosine patterns, |mu| <= 0.4), stds and a long-tailed prior."""
    hh, ww = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    mu = torch.stack([0.4 * torch.cos(torch.pi * (k + 1) * (hh + ww) / size) for k in range(K)])[:, None]
    mu = mu.expand(K, C, size, size).float().contiguous()
    sigma = [0.1 + 0.05 * k for k in range(K)]
    prior = [0.6 / (k + 1) for k in range(K)]
    return mu, sigma, prior


def gaussian_denoiser(schedule: NoiseSchedule | None = None, **kw) -> tuple[GaussianDenoiser, NoiseSchedule]:
    s = schedule or NoiseSchedule.linear(1000)
    mu, sigma, prior = gaussian_classes(**kw)
    return GaussianDenoiser(s.alpha_bar, mu, sigma, prior), s
