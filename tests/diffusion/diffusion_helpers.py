"""Tiny seeded models for the diffusion tests (imported by module name: tests are not a package)."""
from __future__ import annotations

import torch
from torch import nn

from ltaug.diffusion import NoiseSchedule, SimpleFeatureSpace, UNet, UNetSpec

MICRO = dict(in_channels=1, image_size=8, num_classes=3, ch=8, ch_mult=(1, 2), num_res_blocks=1,
             attn_resolutions=(4,), dropout=0.0, groups=4)


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
