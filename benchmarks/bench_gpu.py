"""GPU benchmark (issue "Performance", item 5): ``run(quick) -> {"metrics", "details", "gpu"}``.

On a CUDA device it measures, in one process, for the CIFAR preset UNet (``model.preset=cbdm``, ~35.7M
parameters, 32x32x3):

- ``bf16_matmul_tflops``: the device's bf16 matmul peak measured in the same run (the MFU denominator);
- ``sampler_img_s`` / ``sampler_mfu``: DDIM-50 + classifier-free guidance (omega 1), batch 256, bf16 autocast,
  channels_last; ``sampler_guided_img_s`` / ``sampler_guided_mfu`` / ``guided_vs_unguided``: the same with minority
  self-guidance every 5 steps; FLOPs are counted by ``torch.utils.flop_counter`` over one whole sampling call
  (so guidance's backward and re-denoise passes are counted as work, as they are);
- ``train_it_s`` / ``train_mfu``: optimizer steps per second at batch 128 with the MSE + CBDM + CCUA (InfoNCE +
  conditional-unconditional alignment) terms on, bf16 autocast for the network, loss reductions in fp32;
- ``loss_terms_bf16_rel_diff``: each loss term's value under bf16 autocast vs fp32 on the same batch (the
  terms that need fp32 are the ones whose difference is large);
- ``diffusers_sampler_img_s`` / ``diffusers_sampler_mfu``: a matched diffusers ``UNet2DModel`` (same widths,
  levels, blocks, attention resolution) with ``DDIMScheduler``, the same batch, steps, CFG, dtype and layout;
- with ``--compile`` (``LTAUG_BENCH_COMPILE=1``): the sampler again with ``torch.compile(model)``.

Without a CUDA device the section is ``{"device": null, "reason": ...}`` and no figure is produced: GPU figures
are only ever measured on a GPU. ``measure()`` is the same code on any device, so a CPU test exercises it on tiny
sizes (tests/bench/test_bench_gpu.py); CPU numbers from it are not GPU figures and are never published as such.
Run on a GPU machine: ``python benchmarks/run.py --only bench_gpu --repeats 1``.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NO_GPU_REASON = ("no CUDA device on the machine this ran on (the task's 2-core CPU machine; no GPU machine was "
                 "lent to this task when the benchmarks were run)")


@dataclass(frozen=True)
class Sizes:
    preset: str = "cbdm"
    image_size: int = 32
    channels: int = 3
    num_classes: int = 10
    batch: int = 256
    steps: int = 50
    train_batch: int = 128
    train_steps: int = 20
    matmul_n: int = 8192
    repeats: int = 3


FULL = Sizes()
QUICK = Sizes(steps=50, train_steps=10, repeats=2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Best of ``repeats`` wall times after one warm-up call (kernel selection, autotuning, caches)."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else torch.autocast(device.type, enabled=False)


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def matmul_peak(device: torch.device, n: int, dtype: torch.dtype, repeats: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = _timed(lambda: a @ b, device, max(repeats, 3))
    return 2 * n ** 3 / t


def _unet(sz: Sizes, device: torch.device, channels_last: bool):
    from ltaug.diffusion import PRESETS, UNet, UNetSpec

    torch.manual_seed(0)
    m = UNet(UNetSpec(in_channels=sz.channels, image_size=sz.image_size, num_classes=sz.num_classes,
                      **PRESETS[sz.preset])).to(device).eval()
    with torch.no_grad():   # live residual branches (zero-initialised output convs), as in a trained model
        for p in m.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return m.to(memory_format=torch.channels_last) if channels_last else m


def _guidance_cfg(minority: bool):
    from ltaug.config import Config, with_values

    ov = {"guidance.cfg.omega": 1.0, "guidance.minority.scale": 0.1 if minority else 0.0,
          "guidance.minority.every": 5, "sample.sampler": "ddim"}
    return with_values(Config(), ov)


def sampler_figures(model, sz: Sizes, device: torch.device, dtype: torch.dtype | None, minority: bool) -> dict:
    from ltaug.diffusion import NoiseSchedule, guidances_from_config, sample, sample_seeds

    cfg = _guidance_cfg(minority)
    scfg = cfg.sample.__class__(**{**asdict(cfg.sample), "steps": sz.steps})
    sched = NoiseSchedule.linear()     # tables move to the batch's device in NoiseSchedule.at
    y = (torch.arange(sz.batch) % sz.num_classes).to(device)
    seeds = sample_seeds(0, sz.batch)
    guid = guidances_from_config(cfg.guidance)

    def go():
        with _autocast(device, dtype):
            return sample(model, sched, y, seeds, scfg, guidances=guid, num_classes=sz.num_classes)
    t = _timed(go, device, sz.repeats)
    return {"img_s": sz.batch / t, "seconds": t, "flops": _flops(go)}


def diffusers_figures(sz: Sizes, device: torch.device, dtype: torch.dtype | None, channels_last: bool) -> dict:
    from diffusers import DDIMScheduler, UNet2DModel

    from ltaug.diffusion import PRESETS

    p = PRESETS[sz.preset]
    widths = tuple(p["ch"] * k for k in p["ch_mult"])
    res = [sz.image_size // 2 ** i for i in range(len(widths))]
    down = tuple("AttnDownBlock2D" if r in p["attn_resolutions"] else "DownBlock2D" for r in res)
    up = tuple("AttnUpBlock2D" if r in p["attn_resolutions"] else "UpBlock2D" for r in reversed(res))
    torch.manual_seed(0)
    ref = UNet2DModel(sample_size=sz.image_size, in_channels=sz.channels, out_channels=sz.channels,
                      block_out_channels=widths, layers_per_block=p["num_res_blocks"], down_block_types=down,
                      up_block_types=up, norm_num_groups=p["groups"], num_class_embeds=sz.num_classes + 1,
                      attention_head_dim=widths[res.index(p["attn_resolutions"][0])] // max(1, p["num_heads"]),
                      dropout=p["dropout"]).to(device).eval()
    if channels_last:
        ref = ref.to(memory_format=torch.channels_last)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    y = (torch.arange(sz.batch) % sz.num_classes).to(device)
    y2 = torch.cat([y, torch.full_like(y, sz.num_classes)])   # conditional + null label: one [2B] forward (CFG)

    def go():
        sched.set_timesteps(sz.steps)
        x = torch.randn(sz.batch, sz.channels, sz.image_size, sz.image_size, device=device,
                        generator=torch.Generator(device=device).manual_seed(0))
        with torch.no_grad(), _autocast(device, dtype):
            for t in sched.timesteps:
                e = ref(torch.cat([x, x]), t.to(device), class_labels=y2).sample
                ec, eu = e.chunk(2)
                x = sched.step((2.0 * ec - eu).float(), t, x).prev_sample   # omega 1: (1 + w) eps_c - w eps_u
        return x
    t = _timed(go, device, sz.repeats)
    return {"img_s": sz.batch / t, "seconds": t, "flops": _flops(go),
            "params": sum(q.numel() for q in ref.parameters())}


def _loss(device: torch.device):
    from ltaug.config import LossConfig
    from ltaug.diffusion import CompositeLoss, TERMS

    cfg = LossConfig(mse=1.0, cbdm=1.0, infonce=1.0, cond_uncond=1.0, aid=0.0)
    names = ("mse", "cbdm", "infonce", "cond_uncond")
    return CompositeLoss({n: (TERMS[n](cfg, None), 1.0) for n in names}), names


def train_figures(model, sz: Sizes, device: torch.device, dtype: torch.dtype | None) -> dict:
    from ltaug.diffusion import LossContext, NoiseSchedule

    model.train()
    loss, names = _loss(device)
    sched = NoiseSchedule.linear()     # tables move to the batch's device in NoiseSchedule.at
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, **({"fused": True} if device.type == "cuda" else {}))
    g = torch.Generator(device=device).manual_seed(0)
    B = sz.train_batch
    x0 = torch.rand(B, sz.channels, sz.image_size, sz.image_size, device=device, generator=g) * 2 - 1
    y = torch.randint(0, sz.num_classes, (B,), device=device, generator=g)
    t = torch.randint(0, 1000, (B,), device=device, generator=g)
    noise = torch.randn(x0.shape, device=device, generator=g)

    def terms(amp: torch.dtype | None, fn=loss, batch=(x0, y, t, noise)):
        bx, by, bt, bn = batch
        with _autocast(device, amp):
            ctx = LossContext(model, sched, bx, by, bt, bn, num_classes=sz.num_classes, prior_y=by.flip(0),
                              passes=fn.passes, features=fn.needs_features)
            total, logs = fn(ctx)
        return total, logs

    def step():
        total, _ = terms(dtype)
        opt.zero_grad(set_to_none=True)
        total.float().backward()
        opt.step()

    def steps():
        for _ in range(sz.train_steps):
            step()
    secs = _timed(steps, device, max(1, sz.repeats - 1))
    flops = _flops(step)
    model.eval()
    g2 = torch.Generator(device=device).manual_seed(1)   # a batch the timing loop did not fit
    fresh = (torch.rand(x0.shape, device=device, generator=g2) * 2 - 1,
             torch.randint(0, sz.num_classes, (B,), device=device, generator=g2),
             torch.randint(0, 1000, (B,), device=device, generator=g2), torch.randn(x0.shape, device=device, generator=g2))
    with torch.no_grad():   # fresh loss objects: a term with state (CCUA's negative queue) sees the same inputs
        torch.manual_seed(1)
        _, ref = terms(None, _loss(device)[0], fresh)
        torch.manual_seed(1)
        _, low = terms(dtype, _loss(device)[0], fresh) if dtype is not None else (None, ref)
    rel = {}
    for k, v in ref.items():
        if k.startswith("loss/") and k in low:
            a, b = float(v), float(low[k])
            rel[k[5:]] = abs(b - a) / max(abs(a), 1e-12)
    return {"it_s": sz.train_steps / secs, "seconds": secs, "flops_per_step": flops, "terms": list(names),
            "loss_terms_bf16_rel_diff": rel}


def measure(device: torch.device, sz: Sizes = FULL, *, dtype: torch.dtype | None = torch.bfloat16,
            channels_last: bool = True, compile_model: bool = False, diffusers: bool = True) -> dict:
    """Every figure of the ``gpu`` section on ``device`` (the same code on a CPU, for the test)."""
    peak = matmul_peak(device, sz.matmul_n, dtype or torch.float32, sz.repeats)
    model = _unet(sz, device, channels_last)
    params = sum(p.numel() for p in model.parameters())
    plain = sampler_figures(model, sz, device, dtype, minority=False)
    guided = sampler_figures(model, sz, device, dtype, minority=True)
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
           "dtype": str(dtype).replace("torch.", "") if dtype else "float32", "channels_last": channels_last,
           "preset": sz.preset, "params": params, "batch": sz.batch, "steps": sz.steps,
           "matmul_peak_tflops": peak / 1e12,
           "sampler_img_s": plain["img_s"], "sampler_mfu": plain["flops"] / plain["seconds"] / peak,
           "sampler_guided_img_s": guided["img_s"], "sampler_guided_mfu": guided["flops"] / guided["seconds"] / peak,
           "guided_vs_unguided": guided["seconds"] / plain["seconds"]}
    if compile_model:
        cm = torch.compile(model)
        c = sampler_figures(cm, sz, device, dtype, minority=False)
        out.update(sampler_compiled_img_s=c["img_s"], sampler_compiled_mfu=c["flops"] / c["seconds"] / peak)
    tr = train_figures(model, sz, device, dtype)
    out.update(train_batch=sz.train_batch, train_it_s=tr["it_s"], train_mfu=tr["flops_per_step"] * tr["it_s"] / peak,
               train_terms=tr["terms"], loss_terms_bf16_rel_diff=tr["loss_terms_bf16_rel_diff"])
    if diffusers:
        d = diffusers_figures(sz, device, dtype, channels_last)
        out.update(diffusers_sampler_img_s=d["img_s"], diffusers_sampler_mfu=d["flops"] / d["seconds"] / peak,
                   diffusers_params=d["params"], sampler_vs_diffusers=plain["img_s"] / d["img_s"])
    return out


def run(quick: bool = True) -> dict:
    if not torch.cuda.is_available():
        return {"metrics": {}, "details": {"skipped": NO_GPU_REASON}, "gpu": {"device": None, "reason": NO_GPU_REASON}}
    gpu = measure(torch.device("cuda"), QUICK if quick else FULL,
                  compile_model=os.environ.get("LTAUG_BENCH_COMPILE") == "1")
    keys = ("sampler_img_s", "sampler_mfu", "sampler_guided_img_s", "guided_vs_unguided", "train_it_s", "train_mfu",
            "diffusers_sampler_img_s", "sampler_vs_diffusers")
    return {"metrics": {f"gpu_{k}": gpu[k] for k in keys if k in gpu}, "details": {}, "gpu": gpu}


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--full" not in sys.argv), indent=2, default=str))
