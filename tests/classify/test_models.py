"""Backbones: registry contract, parameter counts, any channels / size, internal input normalisation."""
from __future__ import annotations

import pytest
import torch

from ltaug.classify import ARCHS, ModelSpec, build_classifier, num_params


def test_resnet32_has_the_standard_046M_parameters():
    m = build_classifier(ModelSpec("resnet32", 10, 3, 32))
    assert abs(num_params(m) - 0.46e6) < 0.01e6  # He et al. 2016, Table 6: 0.46M
    assert num_params(build_classifier(ModelSpec("resnet20", 10, 3, 32))) == pytest.approx(0.27e6, rel=0.02)
    assert num_params(build_classifier(ModelSpec("resnet56", 10, 3, 32))) == pytest.approx(0.85e6, rel=0.02)


@pytest.mark.parametrize("arch,channels,size", [(a, 1 + 2 * (i % 2), 8 + 4 * (i % 2)) for i, a in enumerate(sorted(ARCHS))])
def test_every_arch_takes_any_channels_and_size(arch, channels, size):
    torch.manual_seed(0)
    m = build_classifier(ModelSpec(arch, 7, channels, size)).eval()
    x = torch.rand(2, channels, size, size) * 2 - 1
    with torch.no_grad():
        phi, logits = m.features(x), m(x)
    assert phi.shape == (2, m.feature_dim) and logits.shape == (2, 7)
    assert torch.allclose(m.fc(phi), logits, atol=1e-5)


def test_large_inputs_use_the_imagenet_stem():
    m = build_classifier(ModelSpec("resnet10", 5, 3, 96)).eval()
    with torch.no_grad():
        assert m(torch.zeros(1, 3, 96, 96)).shape == (1, 5)


def test_unknown_arch_names_the_choices():
    with pytest.raises(ValueError, match="resnet32"):
        build_classifier(ModelSpec("vgg", 10, 3, 32))


def test_model_normalises_its_inputs_itself():
    m = build_classifier(ModelSpec("resnet20", 3, 1, 8)).eval()
    x = torch.rand(16, 1, 8, 8) * 0.5 - 0.9
    m.norm.set_stats(x)
    z = m.norm(x)
    assert z.mean().abs() < 1e-4 and (z.std() - 1).abs() < 1e-2
    assert set(m.state_dict()) >= {"norm.mean", "norm.std"}  # saved with the weights


def test_device_and_dtype_follow_the_input():
    m = build_classifier(ModelSpec("resnet20", 3, 1, 8)).double().eval()
    with torch.no_grad():
        assert m.features(torch.zeros(2, 1, 8, 8, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("arch", ["resnet20", "resnet10"])
def test_normed_linear_gives_cosine_logits(arch):
    """LDAM's last layer: z_j = cos(phi, w_j) (no bias), for CIFAR and torchvision-style backbones."""
    from ltaug.classify.resnet import NormedLinear

    torch.manual_seed(0)
    m = build_classifier(ModelSpec(arch, 5, 3, 8, normed_linear=True)).eval()
    assert isinstance(m.fc, NormedLinear) and not any(n.endswith("fc.bias") for n, _ in m.named_parameters())
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        phi, z = m.features(x), m(x)
    w = m.fc.weight.detach()
    ref = torch.stack([torch.stack([torch.dot(p, wj) / (p.norm() * wj.norm()) for wj in w]) for p in phi])
    assert torch.allclose(z, ref, atol=1e-5) and z.abs().max() <= 1 + 1e-6
    assert torch.allclose(w.norm(dim=1), torch.ones(5), atol=1e-5)   # initialised with unit rows
    assert not isinstance(build_classifier(ModelSpec(arch, 5, 3, 8)).fc, NormedLinear)
