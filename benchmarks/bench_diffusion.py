"""Diffusion-core benchmarks (ratios, not timed tests). ``run(quick) -> {"metrics", "details"}``.

- sampler_guided_vs_unguided: time of minority-guided sampling (every 5 steps) / unguided, same model,
  steps, batch, seeds. Goal <= 1.5 (reference implementation ~1.8).
- loss_terms_cost_vs_passes: training-step time (forward + backward) with all five loss terms / the time
  predicted from the UNet passes they need (3 passes x the mse-only step time). Goal <= 1.1.
- unet_flops_fraction_of_peak: FLOP/s of sampling with the quickstart UNet (torch.utils.flop_counter) /
  this machine's peak measured in the same run (max of a dense fp32 matmul and a 3x3 conv). Goal >= 0.8.
- sampler_flops_vs_diffusers: GFLOP/s of our DDIM sampler / diffusers UNet2DModel + DDIMScheduler at
  matched size, batch and steps. Goal >= 1.0. Needs the ``bench`` extra (diffusers).
Run: ``python benchmarks/run.py [--quick] --only bench_diffusion``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ltaug.config import SampleConfig  # noqa: E402
from ltaug.diffusion import (PRESETS, CompositeLoss, LossContext, MinorityGuidance, NoiseSchedule,  # noqa: E402
                             SimpleFeatureSpace, UNet, UNetSpec, Window, sample, sample_seeds)
from ltaug.diffusion.losses import TERMS  # noqa: E402

REPEATS = 3


def _best(fn, repeats=REPEATS) -> float:
    fn()  # warm-up (oneDNN primitive creation)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def _model(seed=0) -> UNet:
    torch.manual_seed(seed)
    m = UNet(UNetSpec(in_channels=1, image_size=16, num_classes=10, **PRESETS["tiny"])).eval()
    with torch.no_grad():  # live (non-zero) residual branches, as in a trained model
        for n, p in m.named_parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return m


def peak_flops(quick: bool) -> dict:
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    t_mm = _best(lambda: a @ b, 5)
    x, w = torch.randn(64, 64, 16, 16), torch.randn(64, 64, 3, 3)
    t_cv = _best(lambda: torch.nn.functional.conv2d(x, w, padding=1), 5)
    mm = 2 * n ** 3 / t_mm
    cv = 2 * 64 * 64 * 9 * 16 * 16 * 64 / t_cv
    return {"matmul_gflops": mm / 1e9, "conv3x3_gflops": cv / 1e9, "peak_gflops": max(mm, cv) / 1e9}


def sampler_guided_vs_unguided(quick: bool) -> dict:
    m, s = _model(), NoiseSchedule.linear()
    B, steps = (16, 20) if quick else (32, 50)
    y, seeds = torch.arange(B) % 10, sample_seeds(0, B)
    spec = SampleConfig(sampler="ddim", steps=steps)
    g = MinorityGuidance(0.4, Window(every=5))
    t_plain = _best(lambda: sample(m, s, y, seeds, spec))
    t_guided = _best(lambda: sample(m, s, y, seeds, spec, guidances=[g]))
    return {"ratio": t_guided / t_plain, "plain_s": t_plain, "guided_s": t_guided, "batch": B, "steps": steps}


def loss_terms_cost_vs_passes(quick: bool) -> dict:
    from ltaug.config import LossConfig

    torch.manual_seed(0)
    m = _model().train()
    s = NoiseSchedule.linear()
    B = 32 if quick else 64
    feat = torch.nn.Conv2d(1, 16, 3, padding=1).requires_grad_(False)
    space = SimpleFeatureSpace(lambda x: feat(x).mean(dim=(2, 3)), torch.zeros(10, 16), torch.ones(10))
    cfg = LossConfig(cbdm=1.0, aid=0.1, infonce=1.0, cond_uncond=1.0, aid_gate="none")
    full = CompositeLoss({n: (TERMS[n](cfg, space), 1.0) for n in TERMS})
    mse = CompositeLoss({"mse": (TERMS["mse"](cfg, space), 1.0)})
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(B, 1, 16, 16, generator=g) * 2 - 1
    y = torch.randint(0, 10, (B,), generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    noise = torch.randn(x0.shape, generator=g)

    def step(loss):
        def fn():
            ctx = LossContext(m, s, x0, y, t, noise, num_classes=10, prior_y=y.flip(0), passes=loss.passes,
                              features=loss.needs_features)
            total, _ = loss(ctx)
            m.zero_grad(set_to_none=True)
            total.backward()
        return fn
    t_full = _best(step(full))
    t_mse = _best(step(mse))
    n_passes = len(full.passes)
    return {"ratio": t_full / (n_passes * t_mse), "all_terms_s": t_full, "mse_only_s": t_mse,
            "passes": n_passes, "batch": B}


def _flops_per_forward(model_fn, *args) -> int:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model_fn(*args)
    return fc.get_total_flops()


def unet_flops_fraction_of_peak(quick: bool, peak: dict) -> dict:
    m, s = _model(), NoiseSchedule.linear()
    B, steps = (32, 10) if quick else (64, 25)
    y, seeds = torch.arange(B) % 10, sample_seeds(0, B)
    fl = _flops_per_forward(m, torch.randn(B, 1, 16, 16), torch.full((B,), 500), y) * steps
    t = _best(lambda: sample(m, s, y, seeds, SampleConfig(sampler="ddim", steps=steps)))
    achieved = fl / t / 1e9
    return {"fraction": achieved / peak["peak_gflops"], "achieved_gflops": achieved, "flops_per_run": fl,
            "batch": B, "steps": steps, "seconds": t}


def sampler_flops_vs_diffusers(quick: bool) -> dict:
    try:
        from diffusers import DDIMScheduler, UNet2DModel
    except ImportError as e:
        raise RuntimeError("needs the bench extra: pip install -e .[bench] (diffusers)") from e
    B, steps = (32, 10) if quick else (64, 25)
    torch.manual_seed(0)
    tiny = PRESETS["tiny"]  # matched to our quickstart preset: widths, levels, attention at the last level
    widths = tuple(tiny["ch"] * k for k in tiny["ch_mult"])
    ref = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=widths,
                      layers_per_block=tiny["num_res_blocks"],
                      down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                      up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=tiny["groups"],
                      num_class_embeds=11, attention_head_dim=widths[-1]).eval()
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    y = torch.arange(B) % 10

    def run_ref():
        sched.set_timesteps(steps)
        x = torch.randn(B, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            for t in sched.timesteps:
                eps = ref(x, t, class_labels=y).sample
                x = sched.step(eps, t, x).prev_sample
        return x
    fl_ref = _flops_per_forward(lambda a, b, c: ref(a, b, class_labels=c), torch.randn(B, 1, 16, 16),
                                torch.tensor(500), y) * steps
    t_ref = _best(run_ref)
    ours = unet_flops_fraction_of_peak(quick, {"peak_gflops": 1.0})
    n_ref = sum(p.numel() for p in ref.parameters())
    n_ours = sum(p.numel() for p in _model().parameters())
    g_ref = fl_ref / t_ref / 1e9
    return {"ratio": ours["achieved_gflops"] / g_ref, "ours_gflops": ours["achieved_gflops"], "diffusers_gflops": g_ref,
            "ours_s": ours["seconds"], "diffusers_s": t_ref, "ours_params": n_ours, "diffusers_params": n_ref,
            "ours_flops_per_run": ours["flops_per_run"], "diffusers_flops_per_run": fl_ref, "batch": B, "steps": steps}


def run(quick: bool = True) -> dict:
    details = {"torch_threads": torch.get_num_threads()}
    peak = peak_flops(quick)
    details["peak"] = peak
    metrics = {}
    r = sampler_guided_vs_unguided(quick)
    details["sampler_guided_vs_unguided"] = r
    metrics["sampler_guided_vs_unguided"] = r["ratio"]
    r = loss_terms_cost_vs_passes(quick)
    details["loss_terms_cost_vs_passes"] = r
    metrics["loss_terms_cost_vs_passes"] = r["ratio"]
    r = unet_flops_fraction_of_peak(quick, peak)
    details["unet_flops_fraction_of_peak"] = r
    metrics["unet_flops_fraction_of_peak"] = r["fraction"]
    try:
        r = sampler_flops_vs_diffusers(quick)
        details["sampler_flops_vs_diffusers"] = r
        metrics["sampler_flops_vs_diffusers"] = r["ratio"]
    except RuntimeError as e:
        details["sampler_flops_vs_diffusers"] = {"skipped": str(e)}
    return {"metrics": metrics, "details": details}


if __name__ == "__main__":
    import json

    print(json.dumps(run("--full" not in sys.argv), indent=2, default=str))
