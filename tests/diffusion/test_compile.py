"""``sample.compile``: the sampler's torch.compile path (inductor with frozen weights) draws the eager sampler's
images, plain and minority-guided, and a guided step differentiates w.r.t. x_t only."""
from __future__ import annotations

import pytest
import torch

from ltaug.config import SampleConfig
from ltaug.diffusion import MinorityGuidance, NoiseSchedule, UNet, UNetSpec, Window, for_sampling, sample, sample_seeds


def _unet() -> UNet:
    torch.manual_seed(0)
    m = UNet(UNetSpec(in_channels=1, image_size=8, num_classes=3, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                      attn_resolutions=(4,), dropout=0.0, num_heads=1, groups=4)).eval()
    with torch.no_grad():  # live residual branches (zero-initialised ones would hide a wrong graph)
        for p in m.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return m


def test_off_freezes_weights_and_keeps_the_images():
    m = _unet()
    s, y, seeds = NoiseSchedule.linear(), torch.tensor([0, 1, 2, 0]), sample_seeds(3, 4)
    spec = SampleConfig(sampler="ddim", steps=6)
    g = MinorityGuidance(0.5, Window(every=2))
    ref = sample(m, s, y, seeds, spec, guidances=[g])
    fm = for_sampling(m, "off")
    assert fm is m and not any(p.requires_grad for p in m.parameters())
    assert torch.equal(sample(fm, s, y, seeds, spec, guidances=[g]), ref)   # frozen weights: the same bits


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="sample.compile.*'fast'"):
        for_sampling(_unet(), "fast")


def test_compiled_sampler_matches_eager_plain_and_guided():
    m = _unet()
    s, y, seeds = NoiseSchedule.linear(), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), sample_seeds(5, 8)
    spec = SampleConfig(sampler="ddim", steps=4)
    g = MinorityGuidance(0.5, Window(every=2))
    plain, guided = sample(m, s, y, seeds, spec), sample(m, s, y, seeds, spec, guidances=[g])
    assert (plain - guided).abs().max() > 1e-3   # the guidance moves the images: the check below is not vacuous
    cm = for_sampling(m, "default")
    assert cm is not m and cm.spec == m.spec
    torch.testing.assert_close(sample(cm, s, y, seeds, spec), plain, atol=1e-4, rtol=0)
    torch.testing.assert_close(sample(cm, s, y, seeds, spec, guidances=[g]), guided, atol=1e-4, rtol=0)
