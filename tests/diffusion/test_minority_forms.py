"""Issue 14: minority guidance in eps and mean space against a closed form, the conditional target, the
auto defaults (space per sampler, distance per classifier) and Boost-and-Skip (Um, Kim & Ye, ICML 2025).

The closed form: for Gaussian class data ``x0 ~ N(mu_y, sigma_y^2 I)`` the exact denoiser makes
``x0_hat(x_t) = mu + a_t (x_t - sqrt(ab_t) mu)``, ``a_t = sqrt(ab_t) sigma^2 / v_t``, linear in ``x_t``. With the
re-noise ``x_s = sqrt(ab_s) x0_hat + sqrt(1-ab_s) eps'`` (fixed eps') and the re-denoised ``x0_hat(x_s)`` held
constant, ``grad_{x_t} ||x0_hat - x0_hat(x_s)||_2 = a_t r / ||r||`` with ``r = x0_hat - x0_hat(x_s)``; after the
per-sample L-inf normalisation ``g_hat = r / max|r|``.
"""
from __future__ import annotations

import importlib
import math

import pytest
import torch

from diffusion_helpers import TinyFeatureNet, gaussian_denoiser
from ltaug.config import SampleConfig, load_config
from ltaug.config.diffusion import MinorityConfig
from ltaug.diffusion import ClassifierFree, DDPMStepper, MinorityGuidance, Window, sample, sample_seeds
from ltaug.diffusion.guidance import EpsContext, FeatureDistance, MeanContext, l2_distance, resolve_distance

sample_mod = importlib.import_module("ltaug.diffusion.sample")
Y = torch.tensor([0, 1, 2, 1])
SEEDS = sample_seeds(3, 4)
W = 0.3


def _x0(m, ab: float, x, y):
    mu, sig2 = m.mu[y], m.sigma[y].pow(2).reshape(-1, 1, 1, 1)
    return mu + (math.sqrt(ab) * sig2 / (ab * sig2 + 1 - ab)) * (x - math.sqrt(ab) * mu)


def _eps(m, ab: float, x, y):
    return (x - math.sqrt(ab) * _x0(m, ab, x, y)) / math.sqrt(1 - ab)


def _ghat(m, ab_t: float, ab_s: float, x_t, y, noise):
    x0 = _x0(m, ab_t, x_t, y)
    r = x0 - _x0(m, ab_s, math.sqrt(ab_s) * x0 + math.sqrt(1 - ab_s) * noise, y)
    return r / r.flatten(1).abs().amax(1).reshape(-1, 1, 1, 1)


def _setup(t_i: int = 600, omega: float = 0.0):
    m, s = gaussian_denoiser()
    m = m.double()  # float64: r = x0_hat - x0_hat(x_s) is a difference of close values
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64).requires_grad_(True)
    noise = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.full((4,), t_i, dtype=torch.long)
    with torch.enable_grad():
        pred = {"cond": m(x, t, Y), "uncond": m(x, t, torch.full_like(Y, 3))}
    cfg_eps = pred["cond"] + omega * (pred["cond"] - pred["uncond"])

    def redenoise(x_s, s_, guided=True):
        e_c = m(x_s, s_, Y)
        e = e_c + omega * (e_c - m(x_s, s_, torch.full_like(Y, 3))) if guided else e_c
        return s.eps_to_x0(x_s, s_, e)
    ab_t, ab_s = float(s.alpha_bar[t_i]), float(s.alpha_bar[800])
    want = _ghat(m, ab_t, ab_s, x.detach(), Y, noise)
    return m, s, x, t, pred, cfg_eps, redenoise, (lambda: noise), ab_t, want


def test_eps_and_mean_forms_equal_the_closed_form_gradient():
    m, s, x, t, pred, eps, redenoise, randn, ab_t, want = _setup()
    g = MinorityGuidance(W, Window(), space="eps")
    d_eps = g.delta_eps(EpsContext(x, t, pred, 0, 1, eps=eps, schedule=s, redenoise=redenoise, randn=randn))
    torch.testing.assert_close(d_eps, -math.sqrt(1 - ab_t) * W * want, atol=1e-5, rtol=1e-4)
    gm = MinorityGuidance(W, Window(), space="mean")
    ctx = MeanContext(x_t=x, t=t, eps=eps, x0_hat=s.eps_to_x0(x, t, eps), mean=x, var=0.25, schedule=s,
                      redenoise=redenoise, randn=randn, step=0, steps=1, pred=pred)
    torch.testing.assert_close(gm.delta_mean(ctx), W * 0.25 * want, atol=1e-5, rtol=1e-4)


def test_eps_form_matches_the_mean_form_to_first_order_under_ddpm():
    """On a DDPM grid step the eps delta moves the posterior mean by beta/sqrt(alpha) w g_hat: the mean form
    with Sigma = beta (fixedlarge) times 1/sqrt(alpha) = 1 + O(beta)."""
    m, s = gaussian_denoiser()
    grid = s.respace(50)
    i = 10
    st = DDPMStepper(grid, "fixedlarge")
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    eps, g_hat = m(x, torch.full((4,), grid.t[i]), Y), torch.randn(4, 1, 8, 8)
    d_eps = -math.sqrt(1 - float(grid.ab[i])) * W * g_hat
    shift = st.step(i, x, eps + d_eps)[0] - st.step(i, x, eps)[0]
    beta = float(grid.betas[i])
    torch.testing.assert_close(shift, W * st.guidance_variance(i) * g_hat / math.sqrt(1 - beta), atol=1e-5, rtol=1e-4)
    assert st.guidance_variance(i) == pytest.approx(beta)


def test_target_cond_ignores_cfg_and_target_guided_follows_it():
    m, s, x, t, pred, eps, redenoise, randn, ab_t, want = _setup(omega=2.0)
    ctx = EpsContext(x, t, pred, 0, 1, eps=eps, schedule=s, redenoise=redenoise, randn=randn)
    cond = MinorityGuidance(W, Window(), space="eps", target="cond").delta_eps(ctx)
    torch.testing.assert_close(cond, -math.sqrt(1 - ab_t) * W * want, atol=1e-5, rtol=1e-4)
    guided = MinorityGuidance(W, Window(), space="eps", target="guided").delta_eps(ctx)
    assert (guided - cond).abs().max() > 1e-2


@pytest.mark.parametrize("kind,space", [("ddim", "eps"), ("ddpm", "mean"), ("ddpm", "eps")])
def test_the_loop_follows_the_closed_form_trajectory(kind, space, monkeypatch):
    """Three guided steps of the real loop equal the hand-written recursion on the closed form."""
    draws = []
    orig = sample_mod.per_sample_randn
    monkeypatch.setattr(sample_mod, "per_sample_randn", lambda *a, **k: draws.append(orig(*a, **k)) or draws[-1])
    m, s = gaussian_denoiser()
    m = m.double()
    steps, ab_s = 3, float(s.alpha_bar[800])
    out = sample(m, s, Y, SEEDS, SampleConfig(sampler=kind, steps=steps, eta=0.0),
                 guidances=[MinorityGuidance(W, Window(), space=space)])
    grid = s.respace(steps)
    st = DDPMStepper(grid, "fixedlarge")
    x, k = draws[0], 1
    for i in range(steps):
        ab, abp = float(grid.ab[i]), float(grid.ab_prev[i])
        g_hat = _ghat(m, ab, ab_s, x, Y, draws[k])
        k += 1
        eps = _eps(m, ab, x, Y) - (math.sqrt(1 - ab) * W * g_hat if space == "eps" else 0.0)
        x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        if kind == "ddim":
            x = math.sqrt(abp) * x0 + math.sqrt(1 - abp) * eps
        else:
            x = float(st.c_x0[i]) * x0 + float(st.c_xt[i]) * x
            x = x + (W * st.guidance_variance(i) * g_hat if space == "mean" else 0.0)
            if i < steps - 1:
                x, k = x + math.sqrt(float(st.var[i])) * draws[k], k + 1
    assert k == len(draws)
    torch.testing.assert_close(out, x.clamp(-1, 1), atol=1e-4, rtol=1e-4)


def test_auto_defaults():
    g = MinorityGuidance(0.1)
    assert (g.space, g.target) == ("auto", "cond")
    assert g.space_for("ddim") == "eps" and g.space_for("ddpm") == "mean"
    assert MinorityGuidance(0.1, space="mean").space_for("ddim") == "mean"
    sec = MinorityConfig(scale=0.2)
    assert (sec.space, sec.target, sec.distance) == ("auto", "cond", "auto")
    feats = TinyFeatureNet().features
    assert isinstance(MinorityGuidance.from_config(sec, extractor=feats).distance, FeatureDistance)
    assert MinorityGuidance.from_config(sec).distance is l2_distance
    assert resolve_distance("auto", False) == "l2" and resolve_distance("lpips", True) == "lpips"
    with pytest.raises(ValueError, match="classifier.checkpoint"):
        MinorityGuidance.from_config(MinorityConfig(scale=0.2, distance="classifier"))
    with pytest.raises(Exception, match="guidance.minority.space"):
        load_config(None, ["guidance.minority.space=score"])
    with pytest.raises(ValueError, match="guidance.minority.target"):
        MinorityGuidance(0.1, target="cfg")


def test_generation_settings_name_the_distance_used_and_bns_only_when_on():
    from ltaug.generate.generator import generation_settings
    on = ["guidance.minority.scale=0.1"]
    assert generation_settings(load_config(None, on), "d")["guidance"]["minority"]["distance"] == "l2"
    with_clf = load_config(None, on + ["classifier.checkpoint=/some/clf"])
    assert generation_settings(with_clf, "d")["guidance"]["minority"]["distance"] == "classifier"
    assert "bns_gamma" not in generation_settings(load_config(None, []), "d")["sampler"]
    bns = generation_settings(load_config(None, ["sample.bns_gamma=2.5", "sample.bns_skip=1"]), "d")["sampler"]
    assert (bns["bns_gamma"], bns["bns_skip"]) == (2.5, 1)


# ------------------------------------------------------------------------------------------ Boost-and-Skip
@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_bns_off_is_the_plain_sampler_bit_for_bit(kind):
    m, s = gaussian_denoiser()
    gs = [ClassifierFree(1.0), MinorityGuidance(0.2, Window(every=2))]
    plain = sample(m, s, Y, SEEDS, SampleConfig(sampler=kind, steps=6, eta=0.5), guidances=gs)
    off = sample(m, s, Y, SEEDS, SampleConfig(sampler=kind, steps=6, eta=0.5, bns_gamma=1.0, bns_skip=0), guidances=gs)
    assert torch.equal(plain, off)


def test_bns_boosts_the_start_and_skips_steps(monkeypatch):
    m, s = gaussian_denoiser()
    calls, draws = [], []
    orig, orig_randn = m.forward, sample_mod.per_sample_randn
    m.forward = lambda x, t, y=None, **kw: calls.append((x[:4].clone(), int(t[0]))) or orig(x, t, y, **kw)
    monkeypatch.setattr(sample_mod, "per_sample_randn", lambda *a, **k: draws.append(orig_randn(*a, **k)) or draws[-1])
    steps, gamma, skip = 10, 2.5, 3
    out = sample(m, s, Y, SEEDS, SampleConfig(sampler="ddim", steps=steps, bns_gamma=gamma, bns_skip=skip))
    grid = s.respace(steps)
    assert len(calls) == steps - skip                              # fewer network evaluations
    assert [t for _, t in calls] == list(grid.t[skip:])             # the reference's indices[Delta_t:]
    torch.testing.assert_close(calls[0][0], gamma * draws[0])       # the boosted x_T enters at step Delta
    assert out.shape == (4, 1, 8, 8)
    with pytest.raises(ValueError, match="sample.bns_skip"):
        sample(m, s, Y, SEEDS, SampleConfig(sampler="ddim", steps=4, bns_skip=4))
    with pytest.raises(Exception, match="sample.bns_skip"):
        load_config(None, ["sample.steps=4", "sample.bns_skip=4"])
