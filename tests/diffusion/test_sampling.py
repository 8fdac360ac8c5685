"""Golden values for short DDPM / DDIM loops on a seeded micro UNet (a UNet + sampler regression; the
architecture-free goldens are in test_sampler_goldens.py), guidance behaviour, steppers."""
import pytest
import torch

from diffusion_helpers import GaussianPlusUNet, micro_unet
from ltaug.config import SampleConfig
from ltaug.diffusion import (DISTANCES, ClassifierFree, DDIMStepper, DDPMStepper, MinorityGuidance,
                             NoiseSchedule, Window, sample, sample_batched, sample_seeds)
from ltaug.diffusion.sample import EpsFn

LABELS = torch.tensor([0, 1, 2, 3, 1])  # 3 = null label
SEEDS = sample_seeds(7, 5)

# Measured once on the seeded micro model (sum and first pixels of the final images); the tolerance
# absorbs BLAS rounding differences between machines, not algorithm changes.
GOLDEN = {
    "ddpm": [1.6754786968231201, 0.6422874927520752, 0.4053182303905487, 0.8277431726455688, 1.0, -0.015270943753421307],
    "ddim": [26.642498016357422, 0.5407984852790833, 0.67397540807724, 0.17866413295269012, -0.4726594090461731, -0.7967440485954285],
}


def golden_model():
    s = NoiseSchedule.linear(1000)
    return GaussianPlusUNet(micro_unet(), s.alpha_bar), s


def run(kind, *guidances):
    spec = SampleConfig(sampler=kind, steps=8, eta=0.0)
    m, s = golden_model()
    return sample(m, s, LABELS, SEEDS, spec, guidances=guidances)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_golden(kind):
    x = run(kind)
    got = [float(x.sum()), float(x.abs().mean())] + [float(v) for v in x.flatten()[:4]]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(GOLDEN[kind]), atol=1e-4, rtol=1e-4)


def test_sample_batched_is_one_call():
    m, s = golden_model()
    spec = SampleConfig(sampler="ddpm", steps=6, batch_size=2)
    g = [ClassifierFree(1.0), MinorityGuidance(0.5, Window(every=2))]
    assert torch.equal(sample_batched(m, s, LABELS, SEEDS, spec, guidances=g),
                       sample(m, s, LABELS, SEEDS, spec, guidances=g))


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_zero_scale_guidance_changes_nothing(kind):
    base = run(kind)
    assert torch.equal(base, run(kind, ClassifierFree(0.0)))
    assert torch.equal(base, run(kind, MinorityGuidance(0.0, Window())))
    assert not torch.equal(base, run(kind, MinorityGuidance(2.0, Window())))
    assert not torch.equal(base, run(kind, ClassifierFree(2.0)))


def test_cfg_convention():
    m = micro_unet()
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([5, 5, 5])
    y = torch.tensor([0, 1, 2])
    fn = EpsFn(m, y, 3)
    ec, eu = m(x, t, y), m(x, t, None)
    torch.testing.assert_close(fn(x, t, [ClassifierFree(0.7)]), ec + 0.7 * (ec - eu), atol=1e-5, rtol=1e-5)
    assert fn.forwards == 1  # cond and uncond in one [2B] forward
    torch.testing.assert_close(fn(x, t), ec, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(DISTANCES))
def test_distance_registry(name, tmp_path):
    from diffusion_helpers import TinyFeatureNet

    if name == "lpips":
        with pytest.raises(ValueError, match="lpips_weights"):
            DISTANCES[name]()
        class FakeLPIPS(torch.nn.Module):
            def forward(self, a, b):
                return (a - b).pow(2).mean(dim=(1, 2, 3))
        p = tmp_path / "lpips.pt"
        torch.jit.script(FakeLPIPS()).save(str(p))
        d = DISTANCES[name](lpips_weights=str(p))
    elif name == "classifier":
        with pytest.raises(ValueError, match="classifier"):
            DISTANCES[name]()
        d = DISTANCES[name](extractor=TinyFeatureNet().features)
    else:
        d = DISTANCES[name]()
    a = torch.randn(3, 1, 8, 8, requires_grad=True)
    out = d(a, torch.zeros(3, 1, 8, 8))
    assert out.shape == (3,) and torch.isfinite(out).all()
    out.sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    m = MinorityGuidance(1.0, Window(), distance=d)
    x = run("ddim", m)
    assert torch.isfinite(x).all()


def test_minority_schedule_window_and_forward_reuse():
    g = MinorityGuidance(1.0, Window(every=5))
    n = 20
    active = [i for i in range(n) if g.active(i, n)]
    assert active == [4, 9, 14, 19]  # respaced index n-1-i multiple of 5
    assert MinorityGuidance(1.0).window == Window(every=5)  # SG-minority's inter_rate by default
    w = MinorityGuidance(1.0, Window(0.25, 0.5, 1))
    assert [i for i in range(n) if w.active(i, n)] == [5, 6, 7, 8, 9]
    # a guided step costs exactly one extra (no-grad) forward: x0_hat reuses the step's own forward
    m = micro_unet()
    calls = []
    orig = m.forward
    m.forward = lambda *a, **k: calls.append(torch.is_grad_enabled()) or orig(*a, **k)
    sample(m, NoiseSchedule.linear(1000), LABELS, SEEDS, SampleConfig(sampler="ddim", steps=20), guidances=[g])
    assert len(calls) == 20 + 4 and sum(calls) == 4  # 4 guided forwards with grad, 4 re-denoise without


def test_steppers_final_step_returns_x0():
    s = NoiseSchedule.linear(1000)
    grid = s.respace(4)
    x, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    x0 = s.eps_to_x0(x, torch.tensor([0, 0]), eps)
    for st in (DDPMStepper(grid), DDIMStepper(grid, eta=1.0)):
        mean, std = st.step(3, x, eps)
        torch.testing.assert_close(mean, x0)
        assert std == 0.0
    # DDPM on the full grid equals the schedule's posterior mean
    full = s.respace(1000)
    mean, std = DDPMStepper(full, "fixedsmall").step(500, x, eps)
    t = torch.tensor([full.t[500]] * 2)
    torch.testing.assert_close(mean, s.posterior_mean(s.eps_to_x0(x, t, eps), x, t))
    assert std == pytest.approx(float(s.posterior_variance[full.t[500]]) ** 0.5)
    # DDIM eta=1 has the DDPM posterior std
    assert DDIMStepper(full, 1.0).step(500, x, eps)[1] == pytest.approx(std)
