import torch

from ltaug.diffusion import PRESETS, UNet, UNetSpec
from ltaug.diffusion.unet import num_params

from diffusion_helpers import micro_unet


def test_shapes_null_label_and_features():
    m = micro_unet()
    x = torch.randn(5, 1, 8, 8)
    t = torch.tensor([0, 1, 500, 998, 999])
    y = torch.tensor([0, 1, 2, 3, 0])  # 3 = null label
    eps, h = m(x, t, y, return_features=True)
    assert eps.shape == x.shape and h.shape == (5, 16, 4, 4)
    torch.testing.assert_close(m(x, t, None), m(x, t, torch.full((5,), 3)))
    assert not torch.allclose(m(x, t, torch.zeros(5, dtype=torch.long)), m(x, t, None))


def test_presets_sizes():
    tiny = num_params(UNet(UNetSpec(in_channels=1, image_size=16, num_classes=10, **PRESETS["tiny"])))
    assert 5e5 < tiny < 1e6  # CPU quickstart model: ~0.5-1M parameters
    cbdm = UNet(UNetSpec(in_channels=3, image_size=32, num_classes=100, **PRESETS["cbdm"]))
    assert 35e6 < num_params(cbdm) < 37e6  # CBDM CIFAR config: 128, [1,2,2,2], attn 16, 2 blocks
    assert cbdm(torch.randn(1, 3, 32, 32), torch.tensor([5])).shape == (1, 3, 32, 32)


def test_gradients_reach_every_parameter():
    m = micro_unet(dropout=0.1)
    x = torch.randn(4, 1, 8, 8)
    m(x, torch.tensor([1, 2, 3, 4]), torch.tensor([0, 1, 2, 3])).pow(2).mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
