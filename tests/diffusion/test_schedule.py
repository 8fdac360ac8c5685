import math

import pytest
import torch

from ltaug.diffusion import NoiseSchedule
from ltaug.diffusion.schedule import respaced_timesteps


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_tables(kind):
    s = NoiseSchedule.linear(1000) if kind == "linear" else NoiseSchedule.cosine(1000)
    assert s.T == 1000
    assert (s.alpha_bar[1:] < s.alpha_bar[:-1]).all()
    assert 0 < float(s.alpha_bar[-1]) < 1e-3 if kind == "linear" else float(s.alpha_bar[-1]) < 1e-3
    if kind == "linear":
        assert float(s.betas[0]) == pytest.approx(1e-4) and float(s.betas[-1]) == pytest.approx(0.02)


def test_eps_x0_roundtrip_and_posterior():
    s = NoiseSchedule.linear(1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 2, 5, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 2, 5, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    xt = s.q_sample(x0, t, eps)
    torch.testing.assert_close(s.eps_to_x0(xt, t, eps), x0)
    torch.testing.assert_close(s.x0_to_eps(xt, t, x0), eps)
    # DDPM eq. (11): mean = (x_t - beta/sqrt(1-ab) eps) / sqrt(alpha)
    b = s.at(s.betas, t, xt)
    ab = s.at(s.alpha_bar, t, xt)
    ref = (xt - b / (1 - ab).sqrt() * eps) / (1 - b).sqrt()
    torch.testing.assert_close(s.posterior_mean(x0, xt, t), ref)
    assert s.q_sample(x0.float(), t, eps.float()).dtype == torch.float32


def test_respacing():
    assert respaced_timesteps(1000, 1000) == list(range(1000))
    ts = respaced_timesteps(1000, 10)
    assert ts[0] == 0 and ts[-1] == 999 and len(ts) == 10
    s = NoiseSchedule.linear(1000)
    full = s.respace(1000)
    torch.testing.assert_close(full.betas, s.betas.flip(0))
    grid = s.respace(50)
    assert grid.t[0] == 999 and grid.t[-1] == 0 and len(grid) == 50
    torch.testing.assert_close(torch.cumprod((1 - grid.betas).flip(0), 0).flip(0), grid.ab)
    assert grid.index_of_fraction(0.8) == min(range(50), key=lambda i: abs(grid.t[i] - 800))
    with pytest.raises(ValueError):
        respaced_timesteps(10, 11)
    assert math.isclose(float(grid.ab_prev[-1]), 1.0)
