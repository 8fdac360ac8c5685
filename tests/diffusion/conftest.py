"""Fixtures for the diffusion tests."""
from __future__ import annotations

import pytest
import torch

from diffusion_helpers import TinyFeatureNet
from ltaug.diffusion import NoiseSchedule, SimpleFeatureSpace


@pytest.fixture
def schedule() -> NoiseSchedule:
    return NoiseSchedule.linear(1000)


@pytest.fixture
def feature_space() -> SimpleFeatureSpace:
    net = TinyFeatureNet()
    g = torch.Generator().manual_seed(1)
    return SimpleFeatureSpace(net.features, torch.randn(3, 6, generator=g) * 0.1, torch.full((3,), 0.05))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(3)
    B = 6
    x0 = torch.rand(B, 1, 8, 8, generator=g) * 2 - 1
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    t = torch.tensor([10, 200, 400, 600, 800, 999])
    noise = torch.randn(B, 1, 8, 8, generator=g)
    prior = torch.tensor([1, 0, 0, 2, 2, 1])
    return dict(x0=x0, y=y, t=t, noise=noise, prior_y=prior)
