"""Sampler goldens on an analytic denoiser (architecture-free: a UNet refactor cannot move them), and
independent checks that DDIM / DDPM reach the known class distribution of the Gaussian denoiser."""
import math

import pytest
import torch

from diffusion_helpers import gaussian_denoiser
from ltaug.config import SampleConfig
from ltaug.diffusion import ClassifierFree, MinorityGuidance, Window, generators, sample, sample_seeds

LABELS = torch.tensor([0, 1, 2, 3, 1])  # 3 = null label (the class mixture)
SEEDS = sample_seeds(7, 5)
# The pre-issue-14 minority form is pinned explicitly (space=mean, target=guided): its goldens did not move.
OLD = dict(space="mean", target="guided")
GUIDED = {"plain": lambda: [], "cfg": lambda: [ClassifierFree(1.5)],
          "minority": lambda: [MinorityGuidance(0.1, Window(every=2), **OLD)],
          "both": lambda: [ClassifierFree(1.5), MinorityGuidance(0.1, Window(every=2), **OLD)],
          # issue 14: the eps-space form and the conditional target (the new defaults under DDIM)
          "minority_eps": lambda: [MinorityGuidance(0.1, Window(every=2), space="eps")],
          "both_cond": lambda: [ClassifierFree(1.5), MinorityGuidance(0.1, Window(every=2), space="mean")],
          "both_eps": lambda: [ClassifierFree(1.5), MinorityGuidance(0.1, Window(every=2), space="eps")]}

# Measured once in float64 (8 steps; sum, mean |x|, x[0,0,0,0], x[1,0,3,3], x[3,0,7,7], x[4,0,2,5]), re-measured
# 2026-12-02 from the float32 goldens of before: those held to 1e-5 on the AMD machines they were measured on, but
# an Intel Xeon's float32 (other vector widths in exp/softmax and the guidance's reductions) moved the guided DDIM
# rows by up to 2.3e-4 - the mixture image (label 3) sits near a mode boundary that guidance crosses, which
# amplifies last-bit differences. In float64 the analytic denoiser (no GEMM) reproduces to ~1e-12, so a change
# beyond 1e-8 means the sampling algorithm changed. (Minority guidance switches that image from the head class 0
# to class 1 here: distances to the class means 0.35 / 3.67 / 2.97 unguided, 3.75 / 0.42 / 3.66 guided.)
GOLDEN = {
    ("ddpm", "plain"): [-0.8000436325, 0.4105019224, -0.03751953216, 0.2772821194, 0.3499789448, 0.1858053763],
    ("ddpm", "cfg"): [-0.7211039833, 0.410918467, -0.03261329992, 0.2778526045, 0.3499789448, 0.1900044687],
    ("ddpm", "minority"): [-1.046107116, 0.4097045794, -0.03720349189, 0.2789075304, 0.2853505381, 0.1862696509],
    ("ddpm", "both"): [-0.8740623691, 0.4104154966, -0.03261954528, 0.277244284, 0.2853505381, 0.1935819915],
    ("ddpm", "minority_eps"): [-1.023155293, 0.4098132816, -0.03718061346, 0.2794513716, 0.2793078701, 0.1862788259],
    ("ddpm", "both_cond"): [-0.960652843, 0.4101699086, -0.0322835103, 0.2794922034, 0.2853505381, 0.1907195531],
    ("ddpm", "both_eps"): [-0.9338264354, 0.4102967288, -0.0322532161, 0.2800130668, 0.2793078701, 0.1908746929],
    ("ddim", "plain"): [-19.42545868, 0.255354444, 0.3551436572, 0.09187717765, 0.2702723833, 0.2069140776],
    ("ddim", "cfg"): [-18.92300391, 0.2605110934, 0.3551671426, 0.09630817085, 0.2702723833, 0.2193702997],
    ("ddim", "minority"): [-10.41654618, 0.2595238527, 0.3504392196, 0.1005747869, 0.03884155794, 0.1986358675],
    ("ddim", "both"): [-10.13330379, 0.2631227763, 0.3550790797, 0.09034218488, 0.03884155794, 0.2158623668],
    ("ddim", "minority_eps"): [-10.27936302, 0.2621182584, 0.3482143497, 0.104597451, 0.03912536934, 0.1932467698],
    ("ddim", "both_cond"): [-9.888893612, 0.2648819081, 0.3504755509, 0.1049470593, 0.03884155794, 0.2117058635],
    ("ddim", "both_eps"): [-9.748886444, 0.2674575134, 0.3482688255, 0.1091749376, 0.03912536934, 0.2064277016],
}


def summary(x: torch.Tensor) -> list[float]:
    return [float(x.sum()), float(x.abs().mean()), float(x[0, 0, 0, 0]), float(x[1, 0, 3, 3]),
            float(x[3, 0, 7, 7]), float(x[4, 0, 2, 5])]


@pytest.mark.parametrize("guided", sorted(GUIDED))
@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_golden_analytic(kind, guided):
    m, s = gaussian_denoiser()
    x = sample(m.double(), s, LABELS, SEEDS, SampleConfig(sampler=kind, steps=8), guidances=GUIDED[guided]())
    assert x.dtype == torch.float64
    torch.testing.assert_close(torch.tensor(summary(x), dtype=torch.float64),
                               torch.tensor(GOLDEN[kind, guided], dtype=torch.float64), atol=1e-8, rtol=1e-8)


def _ddim_factor(ab: float, abp: float, var: float) -> float:
    """DDIM (eta 0) maps ``u = x_t - sqrt(ab) mu`` to ``f u`` on N(mu, var I) data (derived by hand)."""
    v = ab * var + 1 - ab
    return (math.sqrt(ab * abp) * var + math.sqrt((1 - ab) * (1 - abp))) / v


def test_ddim_is_the_exact_affine_map_of_the_gaussian():
    """With the exact eps of N(mu_y, s_y^2 I), DDIM eta=0 sends the initial noise x_T to
    ``mu_y + F_y (x_T - sqrt(ab_T) mu_y)``, ``F_y`` a product of per-step factors: checked to 1e-5."""
    m, s = gaussian_denoiser()
    y = torch.tensor([0, 1, 2, 2, 0, 1])
    seeds = sample_seeds(5, len(y))
    steps = 50
    x = sample(m, s, y, seeds, SampleConfig(sampler="ddim", steps=steps, eta=0.0))
    grid = s.respace(steps)
    x_T = torch.stack([torch.randn((1, 8, 8), generator=g) for g in generators(seeds)])  # the loop's first draw
    for k in range(len(y)):
        c = int(y[k])
        F = math.prod(_ddim_factor(float(grid.ab[i]), float(grid.ab_prev[i]), float(m.sigma[c]) ** 2)
                      for i in range(steps))
        mu = m.mu[c]
        want = mu + F * (x_T[k] - math.sqrt(float(grid.ab[0])) * mu)
        torch.testing.assert_close(x[k], want, atol=1e-5, rtol=1e-5)
    # the factor tends to the data std as the grid refines (the probability-flow ODE is exact)
    g1000 = s.respace(1000)
    for sig in (0.1, 0.2):
        F = math.prod(_ddim_factor(float(g1000.ab[i]), float(g1000.ab_prev[i]), sig ** 2) for i in range(1000))
        assert F == pytest.approx(sig, rel=0.02)


def _ddpm_std(grid, var: float, variance: str) -> float:
    """Std of ``u`` after ancestral DDPM on N(mu, var I) data, from the linear recursion ``u' = a u + std z``."""
    ab, abp = grid.ab.tolist(), grid.ab_prev.tolist()
    betas = grid.betas.tolist()
    step_var = (grid.fixedlarge_variance() if variance == "fixedlarge" else grid.posterior_variance).tolist()
    u_var = 1.0  # x_T ~ N(0, I); the sqrt(ab_T) mu offset (< 1e-2) enters the mean only
    for i in range(len(ab)):
        v = ab[i] * var + 1 - ab[i]
        c_x0 = betas[i] * math.sqrt(abp[i]) / (1 - ab[i])
        c_xt = (1 - abp[i]) * math.sqrt(1 - betas[i]) / (1 - ab[i])
        a = c_x0 * math.sqrt(ab[i]) * var / v + c_xt
        u_var = a * a * u_var + (step_var[i] if i < len(ab) - 1 else 0.0)
    return math.sqrt(u_var)


@pytest.mark.parametrize("kind,variance", [("ddim", "fixedlarge"), ("ddpm", "fixedsmall"), ("ddpm", "fixedlarge")])
def test_samplers_reach_the_class_distribution(kind, variance):
    """96 images per class: the sample mean is the class mean, the sample std is the analytic one
    (DDIM: the factor product; DDPM: the variance recursion), both close to the data std."""
    m, s = gaussian_denoiser()
    n, steps = 96, 200
    y = torch.arange(3).repeat_interleave(n)
    x = sample(m, s, y, sample_seeds(3, len(y)), SampleConfig(sampler=kind, steps=steps, variance=variance))
    grid = s.respace(steps)
    for c in range(3):
        d = x[y == c] - m.mu[c]
        sig = float(m.sigma[c])
        assert abs(float(d.mean())) < 0.01                             # mean exact up to sampling error
        assert float((x[y == c].mean(0) - m.mu[c]).abs().mean()) < 0.15 * sig  # per pixel: ~ 0.8 sig / sqrt(n)
        want = (math.prod(_ddim_factor(float(grid.ab[i]), float(grid.ab_prev[i]), sig ** 2) for i in range(steps))
                if kind == "ddim" else _ddpm_std(grid, sig ** 2, variance))
        assert float(d.std()) == pytest.approx(want, rel=0.05)
        assert want == pytest.approx(sig, rel=0.15)
