"""A trained ltaug diffusion model as a diffusers ``UNet2DModel`` + ``DDIMScheduler`` (safetensors).

The ltaug :class:`~ltaug.diffusion.unet.UNet` is the DDPM U-Net (Ho et al. 2020), which diffusers' ``UNet2DModel``
reproduces block for block: ``conv_in``, sinusoidal time embedding (``flip_sin_to_cos=False, freq_shift=1``) +
``TimestepEmbedding``, a class embedding ``nn.Embedding(C + 1, 4 ch)`` added to it (``num_class_embeds = C + 1``;
class ``C`` is the null label of classifier-free guidance), ``DownBlock2D`` / ``AttnDownBlock2D`` per level
(attention where the level's resolution is in ``model.attn_resolutions``), a ``UNetMidBlock2D`` (resnet, attention,
resnet), ``UpBlock2D`` / ``AttnUpBlock2D`` with ``layers_per_block + 1`` resnets, ``conv_norm_out`` / ``conv_out``.
The mapping is exact (weights are copied, nothing is re-fitted) when every width is a multiple of
``model.groups`` and, with ``model.num_heads > 1``, all attention levels have one width; otherwise
:func:`diffusers_unet_config` raises an :class:`ExportError` naming the key.

ltaug's one batched ``temb_proj`` (all blocks' time projections in one linear) is split row-wise into each
resnet's ``time_emb_proj``; its fused 1x1-conv ``qkv`` into ``to_q`` / ``to_k`` / ``to_v``.

Writing needs only ``safetensors`` (the files are diffusers' on-disk layout: ``unet/config.json`` +
``unet/diffusion_pytorch_model.safetensors``, ``scheduler/scheduler_config.json``); loading them needs diffusers::

    unet = UNet2DModel.from_pretrained(d, subfolder="unet"); sched = DDIMScheduler.from_pretrained(d, subfolder="scheduler")
    eps = unet(x, t, class_labels=y).sample          # x in [-1, 1], y in 0..C-1 (C = unconditional)

Sampler note: ltaug's DDIM grid is ``round(linspace(0, T-1, steps))`` stepping to the *previous grid step*;
diffusers' ``DDIMScheduler`` (``timestep_spacing="linspace"``, written here) uses the same timesteps but steps to
``t - T // steps``. The two agree exactly when ``steps == T``; for fewer steps the stock scheduler's samples
differ slightly from ltaug's (the model and the noise schedule are still the same).
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import Tensor

from .schedule import NoiseSchedule
from .unet import UNet, UNetSpec

DIFFUSERS_VERSION = "0.30.0"   # the oldest diffusers whose UNet2DModel / DDIMScheduler read every key written


class ExportError(ValueError):
    """A model that cannot be written in the target format; the message names the config key."""


def _widths(spec: UNetSpec) -> list[int]:
    return [spec.ch * m for m in spec.ch_mult]


def _attn_levels(spec: UNetSpec) -> list[bool]:
    return [spec.image_size // (2 ** lv) in spec.attn_resolutions for lv in range(len(spec.ch_mult))]


def diffusers_unet_config(spec: UNetSpec) -> dict[str, Any]:
    """The ``UNet2DModel`` config of ``spec`` (``config.json``)."""
    widths = _widths(spec)
    if spec.ch % spec.groups or any(w % spec.groups for w in widths):
        raise ExportError(f"model.groups={spec.groups}: every width ({[spec.ch, *widths]}) must be a multiple of it "
                          f"for UNet2DModel (ltaug uses gcd(groups, width) per layer; diffusers one group count)")
    attn = _attn_levels(spec)
    att_widths = {w for w, a in zip(widths, attn) if a} | {widths[-1]}
    head_dim = None
    if spec.num_heads > 1:
        if len(att_widths) > 1:
            raise ExportError(f"model.num_heads={spec.num_heads}: attention at widths {sorted(att_widths)}; "
                              f"UNet2DModel has one attention_head_dim (export with num_heads=1 or one attention width)")
        head_dim = att_widths.pop() // spec.num_heads
    return {
        "_class_name": "UNet2DModel", "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": spec.image_size, "in_channels": spec.in_channels, "out_channels": spec.in_channels,
        "center_input_sample": False, "time_embedding_type": "positional", "freq_shift": 1,
        "flip_sin_to_cos": False,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "block_out_channels": widths, "layers_per_block": spec.num_res_blocks, "mid_block_scale_factor": 1,
        "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0,
        "act_fn": "silu", "attention_head_dim": head_dim, "norm_num_groups": spec.groups,
        "attn_norm_num_groups": None, "norm_eps": 1e-5, "resnet_time_scale_shift": "default",
        "add_attention": True, "class_embed_type": None, "num_class_embeds": spec.num_classes + 1,
        "num_train_timesteps": None,
    }


def diffusers_scheduler_config(schedule_cfg: Any, steps_hint: int | None = None) -> dict[str, Any]:
    """The ``DDIMScheduler`` config of a ``diffusion`` config section (``scheduler_config.json``)."""
    if schedule_cfg.schedule == "linear":
        betas = {"beta_schedule": "linear", "beta_start": schedule_cfg.beta_start, "beta_end": schedule_cfg.beta_end}
    elif schedule_cfg.schedule == "cosine":   # Nichol & Dhariwal 2021, s = 0.008, beta <= 0.999 (checked below)
        betas = {"beta_schedule": "squaredcos_cap_v2", "beta_start": 0.0001, "beta_end": 0.02}
    else:
        raise ExportError(f"diffusion.schedule={schedule_cfg.schedule!r}: no diffusers beta_schedule for it")
    return {"_class_name": "DDIMScheduler", "_diffusers_version": DIFFUSERS_VERSION,
            "num_train_timesteps": schedule_cfg.timesteps, **betas, "trained_betas": None,
            "clip_sample": False, "clip_sample_range": 1.0, "set_alpha_to_one": True, "steps_offset": 0,
            "prediction_type": "epsilon", "thresholding": False, "timestep_spacing": "linspace",
            "rescale_betas_zero_snr": False}


def _resnet(sd: dict[str, Tensor], src: str, dst: str, rb: Any, proj: tuple[Tensor, Tensor], span: tuple[int, int],
            out: dict[str, Tensor]) -> None:
    for a, b in (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"), ("skip", "conv_shortcut")):
        for p in ("weight", "bias"):
            k = f"{src}.{a}.{p}"
            if k in sd:
                out[f"{dst}.{b}.{p}"] = sd[k]
    lo, hi = span
    out[f"{dst}.time_emb_proj.weight"] = proj[0][lo:hi]
    out[f"{dst}.time_emb_proj.bias"] = proj[1][lo:hi]


def _attention(sd: dict[str, Tensor], src: str, dst: str, out: dict[str, Tensor]) -> None:
    w, b = sd[f"{src}.qkv.weight"][:, :, 0, 0], sd[f"{src}.qkv.bias"]
    C = w.shape[1]
    for i, name in enumerate(("to_q", "to_k", "to_v")):
        out[f"{dst}.{name}.weight"] = w[i * C:(i + 1) * C]
        out[f"{dst}.{name}.bias"] = b[i * C:(i + 1) * C]
    out[f"{dst}.to_out.0.weight"] = sd[f"{src}.proj.weight"][:, :, 0, 0]
    out[f"{dst}.to_out.0.bias"] = sd[f"{src}.proj.bias"]
    out[f"{dst}.group_norm.weight"] = sd[f"{src}.norm.weight"]
    out[f"{dst}.group_norm.bias"] = sd[f"{src}.norm.bias"]


def diffusers_state_dict(model: UNet) -> dict[str, Tensor]:
    """The weights of ``model`` under ``UNet2DModel``'s parameter names (contiguous float32 copies)."""
    spec = model.spec
    diffusers_unet_config(spec)   # raises ExportError when the architecture does not map
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    proj = (sd["temb_proj.weight"], sd["temb_proj.bias"])
    span = {id(rb): s for rb, s in zip(model._blocks, model._offsets)}
    out: dict[str, Tensor] = {
        "time_embedding.linear_1.weight": sd["time_mlp.0.weight"], "time_embedding.linear_1.bias": sd["time_mlp.0.bias"],
        "time_embedding.linear_2.weight": sd["time_mlp.2.weight"], "time_embedding.linear_2.bias": sd["time_mlp.2.bias"],
        "class_embedding.weight": sd["label_emb.weight"], "conv_in.weight": sd["head.weight"], "conv_in.bias": sd["head.bias"],
        "conv_norm_out.weight": sd["tail.0.weight"], "conv_norm_out.bias": sd["tail.0.bias"],
        "conv_out.weight": sd["tail.2.weight"], "conv_out.bias": sd["tail.2.bias"]}
    levels, nrb = len(spec.ch_mult), spec.num_res_blocks
    i = 0
    for lv in range(levels):
        for j in range(nrb):
            rb, attn = model.down[i]
            _resnet(sd, f"down.{i}.0", f"down_blocks.{lv}.resnets.{j}", rb, proj, span[id(rb)], out)
            if not isinstance(attn, torch.nn.Identity):
                _attention(sd, f"down.{i}.1", f"down_blocks.{lv}.attentions.{j}", out)
            i += 1
        if lv != levels - 1:
            out[f"down_blocks.{lv}.downsamplers.0.conv.weight"] = sd[f"down.{i}.weight"]
            out[f"down_blocks.{lv}.downsamplers.0.conv.bias"] = sd[f"down.{i}.bias"]
            i += 1
    _resnet(sd, "mid1", "mid_block.resnets.0", model.mid1, proj, span[id(model.mid1)], out)
    _attention(sd, "mid_attn", "mid_block.attentions.0", out)
    _resnet(sd, "mid2", "mid_block.resnets.1", model.mid2, proj, span[id(model.mid2)], out)
    i = 0
    for k in range(levels):
        for j in range(nrb + 1):
            rb, attn = model.up[i]
            _resnet(sd, f"up.{i}.0", f"up_blocks.{k}.resnets.{j}", rb, proj, span[id(rb)], out)
            if not isinstance(attn, torch.nn.Identity):
                _attention(sd, f"up.{i}.1", f"up_blocks.{k}.attentions.{j}", out)
            i += 1
        if k != levels - 1:
            out[f"up_blocks.{k}.upsamplers.0.conv.weight"] = sd[f"up.{i}.1.weight"]
            out[f"up_blocks.{k}.upsamplers.0.conv.bias"] = sd[f"up.{i}.1.bias"]
            i += 1
    return {k: v.contiguous().clone() for k, v in out.items()}


def check_scheduler_betas(schedule: NoiseSchedule, config: dict[str, Any]) -> None:
    """The betas diffusers will rebuild from ``config`` equal ltaug's (float32 tolerance)."""
    import math

    T = config["num_train_timesteps"]
    if config["beta_schedule"] == "linear":
        ref = torch.linspace(config["beta_start"], config["beta_end"], T, dtype=torch.float64)
    else:
        f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        ref = torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float64)
    err = float((ref - schedule.betas.double().cpu()).abs().max())
    if err > 1e-6:
        raise ExportError(f"diffusion.schedule: diffusers' {config['beta_schedule']} betas differ from ltaug's by {err:.2e}")


def export_diffusers(ckpt_uri: str, out_dir: str, use_ema: bool = True) -> dict[str, str]:
    """Write the diffusion checkpoint ``ckpt_uri`` into the local directory ``out_dir`` in diffusers' layout
    (+ ``ltaug.json``: class names, null label, pixel range, source checkpoint); the written files."""
    from safetensors.torch import save_file

    from ..config import DiffusionConfig
    from ..config.schema import build
    from .train import load_diffusion

    loaded = load_diffusion(ckpt_uri, "cpu", use_ema=use_ema)
    spec = loaded.model.spec
    unet_cfg = diffusers_unet_config(spec)
    dcfg = build(DiffusionConfig, loaded.config.get("diffusion", {}), "diffusion")
    sched_cfg = diffusers_scheduler_config(dcfg)
    check_scheduler_betas(loaded.schedule, sched_cfg)
    files = {}
    os.makedirs(os.path.join(out_dir, "unet"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "scheduler"), exist_ok=True)
    files["unet_config"] = _write_json(os.path.join(out_dir, "unet", "config.json"), unet_cfg)
    files["unet_weights"] = os.path.join(out_dir, "unet", "diffusion_pytorch_model.safetensors")
    save_file(diffusers_state_dict(loaded.model), files["unet_weights"], metadata={"format": "pt"})
    files["scheduler_config"] = _write_json(os.path.join(out_dir, "scheduler", "scheduler_config.json"), sched_cfg)
    files["ltaug"] = _write_json(os.path.join(out_dir, "ltaug.json"), {
        "source_checkpoint": ckpt_uri, "step": loaded.step, "weights": "ema" if use_ema else "model",
        "num_classes": spec.num_classes, "null_label": spec.null_label, "image_size": spec.image_size,
        "channels": spec.in_channels, "pixel_range": [-1, 1], "prediction_type": "epsilon",
        "class_names": list(loaded.extra.get("class_names") or []),
        "usage": "UNet2DModel.from_pretrained(dir, subfolder='unet')(x, t, class_labels=y).sample"})
    return files


def _write_json(path: str, obj: Any) -> str:
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=2)
    return path


__all__ = ["export_diffusers", "diffusers_unet_config", "diffusers_scheduler_config", "diffusers_state_dict",
           "ExportError", "check_scheduler_betas"]
