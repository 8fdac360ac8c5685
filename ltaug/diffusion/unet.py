"""Class-conditional epsilon-prediction U-Net.

Architecture of DDPM (Ho et al. 2020) as used by pytorch-ddpm / CBDM (Qin et al., CVPR 2023): residual
blocks with GroupNorm + SiLU, the timestep embedding added after the first convolution, self-attention
at chosen resolutions, and a class embedding ``nn.Embedding(C + 1, tdim)`` added to the time embedding.
Index ``C`` is the null label (classifier-free guidance / unconditional branch; CCUA's ``y = None``).

CPU-efficiency choices: every time/label projection of every residual block is one batched linear
(computed once per forward, not per block), attention uses ``scaled_dot_product_attention`` on
fused qkv, and there are no Python loops over pixels or samples. Weights and activations are
channels_last end to end (oneDNN's native layout: no NCHW<->blocked reorders around every convolution;
measured 10-25% faster forward+backward for the tiny preset on one core).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as Fn
from torch import Tensor, nn

from ..config.diffusion import MODEL_PRESETS
from ..train.checkpoint import CheckpointError


CHANNELS_LAST = True  # NHWC weights + activations (module attribute so benchmarks can A/B it)


@dataclass(frozen=True)
class UNetSpec:
    """The architecture, all fields required (no defaults: the ``model`` config section and its presets are
    the one source, through :func:`spec_from_config`). Also the record stored in checkpoints (``extra.spec``,
    :meth:`to_record` / :meth:`from_record`)."""

    in_channels: int
    image_size: int
    num_classes: int
    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]
    dropout: float
    num_heads: int
    groups: int               # GroupNorm groups (32 in DDPM; fewer is cheaper and fine for narrow nets)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def to_record(self) -> dict[str, Any]:
        """Plain (JSON / ``weights_only``-safe) form stored as a checkpoint's ``extra.spec``."""
        return {f.name: (list(v) if isinstance(v, tuple) else v)
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], source: str = "checkpoint") -> "UNetSpec":
        """The spec of a checkpoint's ``extra.spec``. Every record written so far holds every field (the
        field set is unchanged since the first checkpoint format); a missing or unknown key is an error
        naming it, never a silent default."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [k for k in names if k not in record]
        unknown = sorted(set(record) - set(names))
        if missing or unknown:
            raise CheckpointError(f"{source}: architecture record extra.spec does not match UNetSpec "
                             f"(missing {missing}, unknown {unknown}); cannot rebuild the model")
        return cls(**{k: (tuple(record[k]) if isinstance(record[k], list) else record[k]) for k in names})


# Presets: the table lives with the config section (ltaug.config.diffusion.MODEL_PRESETS); each row holds
# every architecture field of UNetSpec except in_channels / image_size / num_classes.
PRESETS = MODEL_PRESETS


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of (float) timesteps t [B] -> [B, dim] (Vaswani et al. 2017; DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return Fn.pad(emb, (0, dim % 2))


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    g = math.gcd(groups, ch)
    return nn.GroupNorm(g, ch)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.cin, self.cout = cin, cout
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout, groups)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # residual branch starts at zero (DDPM init)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:  # temb [B, cout], already projected
        h = self.conv1(Fn.silu(self.norm1(x)))
        h = h + temb[:, :, None, None]
        h = self.conv2(self.dropout(Fn.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, ch: int, heads: int, groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = _norm(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # [B, heads, HW, d]
        h = Fn.scaled_dot_product_attention(q, k, v)
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class UNet(nn.Module):
    """``forward(x [B,C,H,W], t [B], y [B] | None, return_features=False) -> eps`` (or ``(eps, h_mid)``).

    ``y=None`` or ``y == num_classes`` selects the null label. ``h_mid`` is the bottleneck activation
    after the middle blocks, ``[B, C_mid, H_mid, W_mid]`` (CCUA's ``return_mid``).
    """

    def __init__(self, spec: UNetSpec) -> None:
        super().__init__()
        if spec.ch % spec.num_heads:
            raise ValueError(f"model.ch={spec.ch} must be divisible by model.num_heads={spec.num_heads}")
        self.spec = spec
        ch, tdim, G = spec.ch, spec.ch * 4, spec.groups
        self.tdim = tdim
        self.time_mlp = nn.Sequential(nn.Linear(ch, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.label_emb = nn.Embedding(spec.num_classes + 1, tdim)
        self.head = nn.Conv2d(spec.in_channels, ch, 3, padding=1)
        res = spec.image_size
        chans = [ch]
        cur = ch
        self.down = nn.ModuleList()
        blocks: list[ResBlock] = []
        for level, mult in enumerate(spec.ch_mult):
            for _ in range(spec.num_res_blocks):
                rb = ResBlock(cur, ch * mult, spec.dropout, G)
                blocks.append(rb)
                cur = ch * mult
                attn = Attention(cur, spec.num_heads, G) if res in spec.attn_resolutions else nn.Identity()
                self.down.append(nn.ModuleList([rb, attn]))
                chans.append(cur)
            if level != len(spec.ch_mult) - 1:
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                chans.append(cur)
                res //= 2
        self.mid1 = ResBlock(cur, cur, spec.dropout, G)
        self.mid_attn = Attention(cur, spec.num_heads, G)
        self.mid2 = ResBlock(cur, cur, spec.dropout, G)
        blocks += [self.mid1, self.mid2]
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(spec.ch_mult))):
            for _ in range(spec.num_res_blocks + 1):
                rb = ResBlock(chans.pop() + cur, ch * mult, spec.dropout, G)
                blocks.append(rb)
                cur = ch * mult
                attn = Attention(cur, spec.num_heads, G) if res in spec.attn_resolutions else nn.Identity()
                self.up.append(nn.ModuleList([rb, attn]))
            if level != 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(cur, cur, 3, padding=1)))
                res *= 2
        self.tail = nn.Sequential(_norm(cur, G), nn.SiLU(), nn.Conv2d(cur, spec.in_channels, 3, padding=1))
        nn.init.zeros_(self.tail[-1].weight)
        nn.init.zeros_(self.tail[-1].bias)
        # One batched projection of the embedding for every residual block (instead of one per block).
        self._blocks = blocks
        self._offsets = []
        off = 0
        for rb in blocks:
            self._offsets.append((off, off + rb.cout))
            off += rb.cout
        self.temb_proj = nn.Linear(tdim, off)
        self.channels_last = CHANNELS_LAST
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, return_features: bool = False):
        B = x.shape[0]
        if y is None:
            y = torch.full((B,), self.spec.null_label, device=x.device, dtype=torch.long)
        emb = self.time_mlp(timestep_embedding(t, self.spec.ch).to(x.dtype)) + self.label_emb(y)
        proj = self.temb_proj(Fn.silu(emb))
        tembs = {id(rb): proj[:, a:b] for rb, (a, b) in zip(self._blocks, self._offsets)}
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        h = self.head(x)
        hs = [h]
        for layer in self.down:
            if isinstance(layer, nn.ModuleList):
                h = layer[1](layer[0](h, tembs[id(layer[0])]))
            else:
                h = layer(h)
            hs.append(h)
        h = self.mid1(h, tembs[id(self.mid1)])
        h = self.mid2(self.mid_attn(h), tembs[id(self.mid2)])
        feats = h
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = torch.cat([h, hs.pop()], dim=1)
                h = layer[1](layer[0](h, tembs[id(layer[0])]))
            else:
                h = layer(h)
        eps = self.tail(h).contiguous()  # callers get the default layout (a no-op for one channel)
        return (eps, feats.contiguous()) if return_features else eps


def spec_from_config(model_cfg, in_channels: int, image_size: int, num_classes: int) -> UNetSpec:
    """The :class:`UNetSpec` of the ``model`` config section: ``model.preset``'s architecture with every key
    set explicitly in ``model`` winning over it (``ModelConfig.architecture``), plus the data's shape."""
    arch = model_cfg.architecture()
    if image_size % (2 ** (len(arch["ch_mult"]) - 1)):
        raise ValueError(f"data.image_size={image_size} is not divisible by 2^(len(model.ch_mult)-1) "
                         f"(model.ch_mult={list(arch['ch_mult'])})")
    return UNetSpec(in_channels=in_channels, image_size=image_size, num_classes=num_classes, **arch)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
