"""Contracts over the registries STEPPERS x GUIDANCES: zero scale is a no-op, batch-split invariance, a
guidance changes only its own space and only inside its window, from_config round-trips, and a new
guidance is one class + one registry line + one config section (the loop is unchanged)."""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass

import pytest
import torch

from diffusion_helpers import GaussianPlusUNet, TinyFeatureNet, gaussian_denoiser, micro_unet
from ltaug.config import GuidanceConfig, SampleConfig, load_config
from ltaug.config.diffusion import CFGConfig, MinorityConfig
from ltaug.diffusion import (GUIDANCES, STEPPERS, Guidance, NoiseSchedule, Window, guidances_from_config, sample,
                             sample_seeds)

LABELS = torch.tensor([0, 1, 2, 0, 1])
SEEDS = sample_seeds(11, 5)
WINDOW = dict(start=0.25, stop=0.75, every=1)
sample_mod = importlib.import_module("ltaug.diffusion.sample")  # the module (the package exports a function `sample`)


def section(name: str, scale: float, **window) -> object:
    base = getattr(GuidanceConfig(), name)
    return dataclasses.replace(base, **{GUIDANCES[name].scale_key: scale, **window})


def build(name: str, scale: float, **window) -> Guidance:
    return GUIDANCES[name].from_config(section(name, scale, **window), extractor=TinyFeatureNet().features)


def scfg(kind: str, steps: int = 8, eta: float = 0.0) -> SampleConfig:
    return SampleConfig(sampler=kind, steps=steps, eta=eta)


class _Recorder:
    """Wraps a stepper: records (x_t, eps, mean, std) per step and how many noise draws preceded it."""

    def __init__(self, inner, log, draws) -> None:
        self.inner, self.grid, self.log, self.draws = inner, inner.grid, log, draws

    def step(self, i, x_t, eps):
        mean, std = self.inner.step(i, x_t, eps)
        self.log.append(dict(i=i, x_t=x_t.detach().clone(), eps=eps.detach().clone(), mean=mean.detach().clone(),
                             std=std, draws=len(self.draws)))
        return mean, std

    def guidance_variance(self, i):
        return self.inner.guidance_variance(i)


def trace(monkeypatch, model, schedule, kind, guidances, labels=LABELS, seeds=SEEDS, steps=8):
    """Sample with a recording stepper; each step also gets ``final_mean``: the mean the loop added noise to."""
    log, draws = [], []
    orig_randn = sample_mod.per_sample_randn
    monkeypatch.setattr(sample_mod, "per_sample_randn", lambda *a, **k: draws.append(orig_randn(*a, **k)) or draws[-1])
    inner = STEPPERS[kind]
    monkeypatch.setitem(STEPPERS, kind, lambda grid, **kw: _Recorder(inner(grid, **kw), log, draws))
    eps_start: dict[int, int] = {}   # draws made before step i's eps stage (eps-space guidances draw there)
    orig_wp = sample_mod.EpsFn.with_pred

    def with_pred(self, x, t, eps_guidances=(), step=0, steps=1, needs=None, grad_through=None):
        eps_start.setdefault(step, len(draws))
        return orig_wp(self, x, t, eps_guidances, step, steps, needs, grad_through)
    monkeypatch.setattr(sample_mod.EpsFn, "with_pred", with_pred)
    out = sample(model, schedule, labels, seeds, scfg(kind, steps, eta=0.5), guidances=guidances)
    for a, b in zip(log, log[1:]):
        z = draws[eps_start[b["i"]] - 1] if a["std"] > 0 else 0.0   # the ancestral draw precedes the next step
        a["final_mean"] = b["x_t"] - a["std"] * z
    return out, log[:-1]


@pytest.mark.parametrize("name", sorted(GUIDANCES))
@pytest.mark.parametrize("kind", sorted(STEPPERS))
def test_zero_scale_is_a_noop(kind, name):
    m, s = gaussian_denoiser()
    plain = sample(m, s, LABELS, SEEDS, scfg(kind))
    assert torch.equal(sample(m, s, LABELS, SEEDS, scfg(kind), guidances=[build(name, 0.0)]), plain)
    assert guidances_from_config(dataclasses.replace(GuidanceConfig(), **{name: section(name, 0.0)})) == []
    assert not torch.equal(sample(m, s, LABELS, SEEDS, scfg(kind), guidances=[build(name, 0.5)]), plain)


@pytest.mark.parametrize("names", [(), *[(n,) for n in sorted(GUIDANCES)], tuple(GUIDANCES)],
                         ids=lambda v: "+".join(v) or "none")
@pytest.mark.parametrize("kind", sorted(STEPPERS))
def test_batch_split_invariance(kind, names):
    """Image k is the same whatever the batch split or order (a real UNet: GEMM paths depend on rows)."""
    s = NoiseSchedule.linear(1000)
    m = GaussianPlusUNet(micro_unet(), s.alpha_bar)
    labels = torch.tensor([0, 1, 2, 3, 1])
    gs = [build(n, 0.5, every=2) for n in names]
    spec = scfg(kind, 6, eta=0.5)
    whole = sample(m, s, labels, SEEDS, spec, guidances=gs)
    parts = torch.cat([sample(m, s, labels[:1], SEEDS[:1], spec, guidances=gs),
                       sample(m, s, labels[1:4], SEEDS[1:4], spec, guidances=gs),
                       sample(m, s, labels[4:], SEEDS[4:], spec, guidances=gs)])
    assert torch.equal(whole, parts)
    reordered = sample(m, s, labels.flip(0), list(reversed(SEEDS)), spec, guidances=gs)
    assert torch.equal(whole, reordered.flip(0))


@pytest.mark.parametrize("name", sorted(GUIDANCES))
@pytest.mark.parametrize("kind", sorted(STEPPERS))
def test_a_guidance_changes_only_its_space_inside_its_window(kind, name, monkeypatch):
    m, s = gaussian_denoiser()
    g = build(name, 0.5, **WINDOW)
    space = g.space_for(kind)  # minority's default (auto): eps under DDIM, mean under DDPM
    other = "delta_mean" if space == "eps" else "delta_eps"
    monkeypatch.setattr(g, other, lambda ctx: pytest.fail(f"{name} ({space} space) was asked for {other}"))
    _, log = trace(monkeypatch, m, s, kind, [g])
    n = len(log) + 1
    seen = set()
    for st in log:
        i, active = st["i"], g.window.active(st["i"], n)
        t = torch.full((len(LABELS),), s.respace(n).t[i], dtype=torch.long)
        cond = m(st["x_t"], t, LABELS)
        eps_moved = not torch.allclose(st["eps"], cond, atol=1e-6, rtol=0)
        mean_moved = not torch.allclose(st["final_mean"], st["mean"], atol=1e-5, rtol=0)
        assert eps_moved == (active and space == "eps"), (i, active)
        assert mean_moved == (active and space == "mean"), (i, active)
        seen.add(active)
    assert seen == {True, False}  # the window covers some steps, not all


@pytest.mark.parametrize("name", sorted(GUIDANCES))
def test_from_config_round_trips(name):
    cls = GUIDANCES[name]
    sec = section(name, 0.7, start=0.1, stop=0.9, every=3)
    g = cls.from_config(sec, extractor=TinyFeatureNet().features)
    assert isinstance(g, cls) and g.scale == 0.7 and g.window == Window(0.1, 0.9, 3)
    assert {g.space_for("ddpm"), g.space_for("ddim")} <= {"eps", "mean"} and set(g.needs) <= {"uncond"}
    built = guidances_from_config(dataclasses.replace(GuidanceConfig(), **{name: sec}))
    assert [type(b) for b in built] == [cls] and built[0].scale == 0.7 and built[0].window == g.window
    # the same from the user-facing keys
    cfg = load_config(None, [f"guidance.{name}.{cls.scale_key}=0.7", f"guidance.{name}.start=0.1",
                             f"guidance.{name}.stop=0.9", f"guidance.{name}.every=3"])
    (c,) = guidances_from_config(cfg.guidance)
    assert type(c) is cls and c.scale == 0.7 and c.window == g.window


def test_registry_order_and_defaults():
    assert guidances_from_config(GuidanceConfig()) == []
    on = GuidanceConfig(**{n: section(n, 0.3) for n in GUIDANCES})
    assert [type(g) for g in guidances_from_config(on)] == list(GUIDANCES.values())
    # classifier-free guidance defaults to every step; minority to SG-minority's every 5
    assert GUIDANCES["cfg"].from_config(CFGConfig(omega=1.0)).window == Window()
    assert GUIDANCES["minority"].from_config(MinorityConfig(scale=1.0)).window == Window(every=5)
    with pytest.raises(Exception, match="guidance.cfg.start"):
        load_config(None, ["guidance.cfg.start=0.8", "guidance.cfg.stop=0.2"])


# ---------------------------------------------------------------- a new guidance: one class, one line, one section
@dataclass(frozen=True)
class ToyConfig:                   # the config section guidance.toy
    scale: float = 0.0
    start: float = 0.0
    stop: float = 1.0
    every: int = 1


@dataclass(frozen=True)
class GuidanceConfigWithToy(GuidanceConfig):
    toy: ToyConfig = ToyConfig()


class ConstantShift(Guidance):     # the class: adds ``scale`` to the posterior mean inside its window
    space, needs, needs_grad = "mean", (), False

    def __init__(self, scale: float, window: Window = Window()) -> None:
        self.scale, self.window = scale, window

    @classmethod
    def from_config(cls, section, **context):
        return cls(section.scale, Window.from_config(section))

    def delta_mean(self, ctx):
        return torch.full_like(ctx.mean, self.scale)


@pytest.mark.parametrize("kind", sorted(STEPPERS))
def test_a_new_guidance_plugs_into_the_unchanged_loop(kind, monkeypatch):
    monkeypatch.setitem(GUIDANCES, "toy", ConstantShift)                    # the registry line
    gcfg = GuidanceConfigWithToy(toy=ToyConfig(scale=0.05, start=0.5, stop=1.0, every=2))
    gs = guidances_from_config(gcfg)
    assert [type(g) for g in gs] == [ConstantShift]
    m, s = gaussian_denoiser()
    _, log = trace(monkeypatch, m, s, kind, gs)
    n = len(log) + 1
    for st in log:
        shift = st["final_mean"] - st["mean"]
        want = 0.05 if gs[0].window.active(st["i"], n) else 0.0
        torch.testing.assert_close(shift, torch.full_like(shift, want), atol=1e-5, rtol=0)
    assert any(gs[0].window.active(i, n) for i in range(n)) and not gs[0].window.active(0, n)


# ------------------------------------------------------------------------------------------------- the loop
def test_grad_and_batched_forward_only_when_needed():
    m, s = gaussian_denoiser()
    calls = []
    orig = m.forward

    def spy(x, t, y=None, **kw):
        calls.append((x.shape[0], torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
        return orig(x, t, y, **kw)
    m.forward = spy
    sample(m, s, LABELS, SEEDS, scfg("ddim"))
    assert calls and all(rows == 8 and not g and inf for rows, g, inf in calls)   # padded to MIN_ROWS, inference
    calls.clear()
    sample(m, s, LABELS, SEEDS, scfg("ddim"), guidances=[build("cfg", 1.0)])
    assert len(calls) == 8 and all(rows == 10 and not g and inf for rows, g, inf in calls)  # one [2B] forward
    calls.clear()
    mg = build("minority", 1.0, every=4)
    sample(m, s, LABELS, SEEDS, scfg("ddim"), guidances=[mg])
    active = sum(mg.active(i, 8) for i in range(8))
    assert active == 2 and len(calls) == 8 + active                     # + one re-denoise per guided step
    assert sum(g for _, g, _ in calls) == active          # the guided steps' forwards track gradients;
    assert sum(inf for *_, inf in calls) == 8             # unguided steps and re-denoises run under inference_mode


def _spied_calls(m):
    calls, orig = [], m.forward

    def spy(x, t, y=None, **kw):
        calls.append((x.shape[0], torch.is_grad_enabled(), x.is_inference()))
        return orig(x, t, y, **kw)
    m.forward = spy
    return calls


class _MinorityThroughAll(GUIDANCES["minority"]):
    """Minority guidance that declares its gradient through every prediction: the loop then keeps CFG's [2B]
    forward batched under grad (the same maths: ``target=cond`` never reads the unconditional rows' graph)."""

    def grad_through(self):
        return ("cond", "uncond")


def test_cfg_plus_minority_runs_the_unconditional_rows_without_autograd():
    m, s = gaussian_denoiser()
    calls = _spied_calls(m)
    cfg, mg = build("cfg", 1.0), build("minority", 1.0, every=4)
    assert mg.target == "cond" and mg.grad_through() == ("cond",)
    split = sample(m, s, LABELS, SEEDS, scfg("ddim"), guidances=[cfg, mg])
    grad_calls = [c for c in calls if c[1]]
    assert [r for r, *_ in grad_calls] == [8, 8]           # the conditional rows only (5, padded to MIN_ROWS)
    assert all(inf for _, g, inf in calls if not g)        # every grad-free forward on inference tensors
    assert len(calls) == 8 + 2 * 2                         # + per guided step: its unconditional rows, a re-denoise
    calls.clear()
    whole = sample(m, s, LABELS, SEEDS, scfg("ddim"),
                   guidances=[cfg, _MinorityThroughAll.from_config(section("minority", 1.0, every=4),
                                                                   extractor=TinyFeatureNet().features)])
    assert [r for r, g, _ in calls if g] == [10, 10]       # the batched [2B] forward under grad
    torch.testing.assert_close(split, whole, atol=1e-5, rtol=0)
    assert GUIDANCES["minority"](1.0, target="guided").grad_through() == ("cond", "uncond")


def test_the_loop_rejects_unknown_spaces_and_predictions():
    m, s = gaussian_denoiser()

    class Odd(ConstantShift):
        space = "score"
    with pytest.raises(ValueError, match="space"):
        sample(m, s, LABELS, SEEDS, scfg("ddim"), guidances=[Odd(1.0)])

    class Greedy(ConstantShift):
        needs = ("prior",)
    with pytest.raises(ValueError, match="prior"):
        sample(m, s, LABELS, SEEDS, scfg("ddim"), guidances=[Greedy(1.0)])
