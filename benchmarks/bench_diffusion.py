"""Diffusion-core benchmarks (ratios, not timed tests). ``run(quick) -> {"metrics", "details"}``.

- sampler_guided_vs_unguided: time of minority-guided sampling (every 5 steps) / unguided, same model,
  steps, batch, seeds, measured interleaved (each the best of its repeats). Goal <= 1.4. Beside it the guided step's
  cost in plain forwards, from its passes timed alone (forward with grad, backward to x_t, re-denoise forward):
  ``guided_step_fwd_equiv`` and the ratio those passes allow, ``passes_bound`` = (every - 1 + that) / every.
- sampler_cfg_guided_vs_cfg: the same with classifier-free guidance on both sides (the pipeline's default).
- loss_terms_cost_vs_passes: training-step time (forward + backward) with all five loss terms / the time
  predicted from the UNet passes they need (3 passes x the mse-only step time). Goal <= 1.1.
- unet_flops_fraction_of_peak: FLOP/s of sampling with the quickstart UNet (torch.utils.flop_counter) /
  this machine's peak (max of a dense fp32 matmul and a 3x3 conv), the peak measured before and after every
  sampling repeat (its best: a dip of the shared machine must not inflate the fraction). Goal >= 0.8.
  ``..._compiled``: the same with ``sample.compile=default`` (torch.compile, frozen weights; compile time beside
  it). ``details.layer_shares``: each op family's share of the UNet's time (torch.profiler), eager and compiled.
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


def peak_flops(quick: bool, into: dict | None = None) -> dict:
    """This machine's fp32 peak: the better of a 1024^2 matmul and a 64->64 3x3 conv at 16x16 (GFLOP/s).
    ``into``: a running record whose fields keep the best seen over calls."""
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    t_mm = _best(lambda: a @ b, 5)
    x, w = torch.randn(64, 64, 16, 16), torch.randn(64, 64, 3, 3)
    t_cv = _best(lambda: torch.nn.functional.conv2d(x, w, padding=1), 5)
    mm = 2 * n ** 3 / t_mm / 1e9
    cv = 2 * 64 * 64 * 9 * 16 * 16 * 64 / t_cv / 1e9
    out = {"matmul_gflops": mm, "conv3x3_gflops": cv, "peak_gflops": max(mm, cv)}
    if into is not None:
        for k, v in out.items():
            into[k] = max(into.get(k, 0.0), v)
        into["samples"] = into.get("samples", 0) + 1
    return out


def _fresh_compile(m: UNet) -> UNet:
    """Forget earlier compiled graphs: each benchmark repeat builds a new model, and dynamo's per-function cache
    (8 entries) would otherwise fill up over the repeats and run the rest eagerly."""
    torch._dynamo.reset()
    return m


def _interleaved(fns: dict, repeats=REPEATS) -> dict:
    """Best wall time of each of ``fns`` over ``repeats`` rounds, the functions run in turn within each round
    (so a slow spell of the shared machine hits every one of them, not one)."""
    for fn in fns.values():
        fn()  # warm-up
    ts = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in ts.items()}


def guided_passes(m: UNet, B: int) -> dict:
    """The guided step's passes timed alone (best of interleaved rounds of 10): plain forward (the unguided
    step), forward with grad w.r.t. x, that forward + backward to x."""
    x, t, y = torch.randn(B, 1, 16, 16), torch.full((B,), 500), torch.arange(B) % 10

    def fwd():
        with torch.inference_mode():
            m(x, t, y)

    def fwd_grad(backward: bool):
        def fn():
            xi = x.detach().requires_grad_(True)
            e = m(xi, t, y)
            if backward:
                torch.autograd.grad(e.pow(2).sum(), xi)
        return fn
    rep = lambda f: (lambda: [f() for _ in range(10)])  # noqa: E731
    b = _interleaved({"fwd": rep(fwd), "fwd_grad": rep(fwd_grad(False)), "fwd_bwd": rep(fwd_grad(True))})
    b = {k: v / 10 for k, v in b.items()}
    return {"fwd_s": b["fwd"], "fwd_grad_s": b["fwd_grad"], "bwd_s": b["fwd_bwd"] - b["fwd_grad"],
            "guided_step_fwd_equiv": (b["fwd_bwd"] + b["fwd"]) / b["fwd"]}


def sampler_guided_vs_unguided(quick: bool, compiled: bool = False, cfg: bool = False) -> dict:
    """``cfg``: both sides with classifier-free guidance (omega 1), as the pipeline samples: CFG + minority
    guidance / CFG alone (its guided steps run the conditional rows with grad, the unconditional rows without)."""
    from ltaug.diffusion import ClassifierFree, for_sampling

    m, s = _model(), NoiseSchedule.linear()
    B, steps = (16, 20) if quick else (32, 50)
    y, seeds = torch.arange(B) % 10, sample_seeds(0, B)
    spec = SampleConfig(sampler="ddim", steps=steps)
    every = 5
    base = [ClassifierFree(1.0)] if cfg else []
    g = [*base, MinorityGuidance(0.4, Window(every=every))]
    m = for_sampling(_fresh_compile(m) if compiled else m, "default" if compiled else "off")
    t0 = time.perf_counter()
    sample(m, s, y, seeds, spec, guidances=g)   # compiles both graphs (grad-free and guided) when compiled
    first_s = time.perf_counter() - t0
    t = _interleaved({"plain": lambda: sample(m, s, y, seeds, spec, guidances=base),
                      "guided": lambda: sample(m, s, y, seeds, spec, guidances=g)})
    out = {"ratio": t["guided"] / t["plain"], "plain_s": t["plain"], "guided_s": t["guided"], "batch": B,
           "steps": steps, "every": every, "first_call_s": first_s, "cfg": cfg}
    if not compiled and not cfg:
        passes = guided_passes(m, B)
        n_guided = len(range(0, steps, every))
        out.update(passes)
        out["passes_bound"] = (steps - n_guided + n_guided * passes["guided_step_fwd_equiv"]) / steps
        # the guided step as the sampler runs it, in plain steps: (guided - plain) / guided steps + 1
        out["sampler_guided_step_fwd_equiv"] = (t["guided"] - t["plain"]) / n_guided / (t["plain"] / steps) + 1
    return out


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


FAMILIES = (("conv", ("convolution",)), ("group_norm", ("group_norm",)), ("silu", ("silu",)),
            ("attention", ("attention",)), ("linear", ("addmm", "linear", "mm")),
            ("add_mul", ("aten::add", "aten::mul", "aten::sub", "aten::div")), ("cat_copy", ("cat", "copy", "clone")),
            ("fused_kernels", ("compiledfxgraph",)))


def layer_shares(m, B: int, n: int = 10) -> dict:
    """Each op family's share of the UNet forward's self CPU time (torch.profiler over ``n`` forwards; for a
    compiled model ``fused_kernels`` is inductor's generated code: fused GroupNorm/SiLU/adds)."""
    from torch.profiler import ProfilerActivity, profile

    x, t, y = torch.randn(B, 1, 16, 16), torch.full((B,), 500), torch.arange(B) % 10
    with torch.inference_mode():
        for _ in range(3):
            m(x, t, y)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n):
                m(x, t, y)
    by: dict[str, float] = {}
    for ev in prof.key_averages():
        name = ev.key.lower()
        fam = next((f for f, keys in FAMILIES if any(k in name for k in keys)), "other")
        by[fam] = by.get(fam, 0.0) + ev.self_cpu_time_total
    total = sum(by.values()) or 1.0
    return {"ms_per_forward": total / n / 1e3, **{f: by.get(f, 0.0) / total for f, _ in FAMILIES + (("other", ()),)}}


def unet_flops_fraction_of_peak(quick: bool, peak: dict, compiled: bool = False, measure_peak: bool = False) -> dict:
    """``measure_peak``: re-measure the peak between the sampling repeats into ``peak`` (its best; see the module
    docstring) and add the per-layer time shares."""
    from ltaug.diffusion import for_sampling

    m, s = _model(), NoiseSchedule.linear()
    B, steps = (32, 10) if quick else (64, 25)
    y, seeds = torch.arange(B) % 10, sample_seeds(0, B)
    fl = _flops_per_forward(m, torch.randn(B, 1, 16, 16), torch.full((B,), 500), y) * steps
    m = for_sampling(_fresh_compile(m) if compiled else m, "default" if compiled else "off")
    t0 = time.perf_counter()
    sample(m, s, y, seeds, SampleConfig(sampler="ddim", steps=steps))
    first_s = time.perf_counter() - t0
    fns = {"sample": lambda: sample(m, s, y, seeds, SampleConfig(sampler="ddim", steps=steps))}
    if measure_peak:
        fns = {"peak": lambda: peak_flops(quick, into=peak), **fns}
    t = _interleaved(fns)["sample"]
    achieved = fl / t / 1e9
    out = {"fraction": achieved / peak["peak_gflops"], "achieved_gflops": achieved, "flops_per_run": fl,
           "peak_gflops": peak["peak_gflops"], "batch": B, "steps": steps, "seconds": t, "first_call_s": first_s}
    if measure_peak:
        out["layer_shares"] = layer_shares(m, B)
    return out


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
    metrics = {}
    r = sampler_guided_vs_unguided(quick)
    details["sampler_guided_vs_unguided"] = r
    metrics["sampler_guided_vs_unguided"] = r["ratio"]
    metrics["guided_passes_bound"] = r["passes_bound"]
    r = sampler_guided_vs_unguided(quick, cfg=True)
    details["sampler_cfg_guided_vs_cfg"] = r
    metrics["sampler_cfg_guided_vs_cfg"] = r["ratio"]
    r = sampler_guided_vs_unguided(quick, compiled=True)
    details["sampler_guided_vs_unguided_compiled"] = r
    metrics["sampler_guided_vs_unguided_compiled"] = r["ratio"]
    r = loss_terms_cost_vs_passes(quick)
    details["loss_terms_cost_vs_passes"] = r
    metrics["loss_terms_cost_vs_passes"] = r["ratio"]
    peak: dict = {}
    peak_flops(quick, into=peak)
    for compiled in (False, True):
        r = unet_flops_fraction_of_peak(quick, peak, compiled=compiled, measure_peak=True)
        key = "unet_flops_fraction_of_peak" + ("_compiled" if compiled else "")
        details[key] = r
    # both fractions against the best peak of the whole module run (measured between all of their repeats)
    for key in ("unet_flops_fraction_of_peak", "unet_flops_fraction_of_peak_compiled"):
        details[key]["fraction"] = details[key]["achieved_gflops"] / peak["peak_gflops"]
        details[key]["peak_gflops"] = peak["peak_gflops"]
        metrics[key] = details[key]["fraction"]
    details["peak"] = peak
    details["layer_shares"] = {"eager": details["unet_flops_fraction_of_peak"].pop("layer_shares"),
                               "compiled": details["unet_flops_fraction_of_peak_compiled"].pop("layer_shares")}
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
