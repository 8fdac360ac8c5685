"""Export to diffusers: UNet2DModel reproduces ltaug's eps exactly; the DDIM loop reproduces ltaug's samples.

Tolerances: eps within 1e-4 absolute (float32, different op order); DDIM samples within 1e-3 absolute
(errors accumulate over the steps; images are in [-1, 1], one uint8 level is 7.8e-3)."""
from __future__ import annotations

import json
import types

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("safetensors")

from ltaug.config import DiffusionConfig, SampleConfig  # noqa: E402
from ltaug.diffusion import UNet  # noqa: E402
from ltaug.diffusion.export import ExportError, diffusers_unet_config, export_diffusers  # noqa: E402
from ltaug.diffusion.sample import sample, per_sample_randn, generators  # noqa: E402
from ltaug.diffusion.schedule import NoiseSchedule  # noqa: E402
from ltaug.diffusion.unet import UNetSpec  # noqa: E402
from ltaug.train import checkpoint as ckpt_io  # noqa: E402

EPS_TOL = 1e-4
SAMPLE_TOL = 1e-3
T = 20


def _spec(**kw):
    base = dict(in_channels=1, image_size=16, num_classes=3, ch=16, ch_mult=(1, 2), num_res_blocks=1,
                attn_resolutions=(8,), dropout=0.0, num_heads=1, groups=8)
    return UNetSpec(**{**base, **kw})


def _model(spec):
    torch.manual_seed(0)
    m = UNet(spec)
    with torch.no_grad():   # the DDPM init zeroes residual branches: randomise everything so every weight counts
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return m.eval()


def _export(tmp_path, spec, timesteps=T):
    m = _model(spec)
    dcfg = {"schedule": "linear", "timesteps": timesteps, "beta_start": 1e-4, "beta_end": 0.2}
    uri = ckpt_io.save(str(tmp_path / "ckpt-000000001.pt"), {
        "kind": "diffusion", "config": {"diffusion": dcfg}, "model": m.state_dict(), "ema": None, "step": 1,
        "extra": {"spec": spec.to_record(), "class_names": ["a", "b", "c"]}})
    out = tmp_path / "export"
    files = export_diffusers(uri, str(out))
    unet = diffusers.UNet2DModel.from_pretrained(str(out), subfolder="unet").eval()
    sched = diffusers.DDIMScheduler.from_pretrained(str(out), subfolder="scheduler")
    return m, unet, sched, files, dcfg


@pytest.mark.parametrize("spec_kw", [{}, {"num_res_blocks": 2, "ch_mult": (1, 1, 2), "attn_resolutions": (16, 4)},
                                     {"num_heads": 2, "attn_resolutions": ()}])
def test_unet2dmodel_gives_ltaugs_eps(tmp_path, spec_kw):
    spec = _spec(**spec_kw)
    m, unet, _, files, _ = _export(tmp_path, spec)
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 5, 11, 19])
    y = torch.tensor([0, 1, 2, 3])          # 3 = the null label (unconditional)
    with torch.no_grad():
        ref = m(x, t, y)
        got = unet(x, t, class_labels=y).sample
    assert (got - ref).abs().max().item() < EPS_TOL
    meta = json.load(open(files["ltaug"]))
    assert meta["null_label"] == 3 and meta["class_names"] == ["a", "b", "c"]


def test_unmappable_architecture_is_an_error_naming_the_key():
    with pytest.raises(ExportError, match="model.groups"):
        diffusers_unet_config(_spec(ch=12, groups=8))
    with pytest.raises(ExportError, match="model.num_heads"):
        diffusers_unet_config(_spec(num_heads=2, ch_mult=(1, 2), attn_resolutions=(16,)))


def _ltaug_ddim(m, dcfg, steps, labels, seeds):
    schedule = NoiseSchedule.from_config(DiffusionConfig(**dcfg))
    scfg = SampleConfig(sampler="ddim", steps=steps)
    return sample(m, schedule, labels, seeds, scfg)


def test_stock_ddim_scheduler_loop_reproduces_ltaug_samples(tmp_path):
    """diffusers' own DDIMScheduler.step loop (steps == T: the grids coincide, see ltaug.diffusion.export)."""
    m, unet, sched, _, dcfg = _export(tmp_path, _spec())
    labels, seeds = torch.tensor([0, 1, 2]), [7, 8, 9]
    ref = _ltaug_ddim(m, dcfg, T, labels, seeds)
    x = per_sample_randn(generators(seeds), (1, 16, 16), "cpu", torch.float32)   # the same initial noise
    sched.set_timesteps(T)
    with torch.no_grad():
        for t in sched.timesteps:
            eps = unet(x, t, class_labels=labels).sample
            x = sched.step(eps, t, x, eta=0.0).prev_sample
    assert (x.clamp(-1, 1) - ref).abs().max().item() < SAMPLE_TOL


def test_respaced_ddim_with_diffusers_model_and_alphas(tmp_path):
    """Respaced DDIM (5 of 20 steps) on ltaug's grid with the diffusers UNet and the scheduler's alphas_cumprod."""
    m, unet, sched, _, dcfg = _export(tmp_path, _spec())
    labels, seeds = torch.tensor([2, 0]), [3, 4]
    ref = _ltaug_ddim(m, dcfg, 5, labels, seeds)
    ts = sorted({round(i * (T - 1) / 4) for i in range(5)})[::-1]
    ab = sched.alphas_cumprod.double()
    x = per_sample_randn(generators(seeds), (1, 16, 16), "cpu", torch.float32)
    with torch.no_grad():
        for i, t in enumerate(ts):
            eps = unet(x, torch.tensor(t), class_labels=labels).sample
            a, ap = float(ab[t]), float(ab[ts[i + 1]]) if i + 1 < len(ts) else 1.0
            x0 = (x - (1 - a) ** 0.5 * eps) / a ** 0.5
            x = ap ** 0.5 * x0 + (1 - ap) ** 0.5 * eps
    assert (x.clamp(-1, 1) - ref).abs().max().item() < SAMPLE_TOL
