"""Classifier training on real (+ weighted synthetic) data through the one training loop, and loading.

``train_classifier`` is a pure function of (config, data, world): it runs locally with ``LocalWorld``
and under Ray Train with a Ray World. The final checkpoint holds the model, its ``ModelSpec`` and the
feature bank (class centres and radii of the real training images), so ``load_classifier`` needs no
training data. DiffuLT's weighted retraining (Shao et al., NeurIPS 2024): real samples weight 1,
synthetic samples weight omega (``classifier.synthetic_weight``) in the loss. Nothing is materialised per
worker: real rows are gathered from the (memory-mapped) image array per step, normalisation statistics and
the feature bank are computed over row chunks, and synthetic shards given as a ``SyntheticSpec`` are
streamed by each worker (:class:`StreamBatches`, ``ltaug.classify.stream``). Under more than one
worker on an accelerator the BatchNorm layers become ``SyncBatchNorm`` (statistics over the global
batch, as one process would see it); the saved weights are plain BatchNorm ones either way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..config import ClassifierConfig
from ..config.schema import to_dict
from ..data.types import to_model_range
from ..train import LoopSpec, StepBatches, World, fit
from ..train import checkpoint as ckpt_io
from .bank import FeatureBank, build_bank, extract_features
from .losses import METHODS, make_method
from .resnet import Classifier, ModelSpec, build_classifier

CKPT_KIND = "classifier"

if TYPE_CHECKING:
    from .stream import SyntheticSpec


@dataclass
class ClassifierResult:
    model: Classifier            # the weights evaluated (EMA when kept), eval mode
    bank: FeatureBank
    spec: ModelSpec
    checkpoint: str | None
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    num_real: int = 0
    num_synthetic: int = 0
    sync_batchnorm: bool = False  # BatchNorm statistics synchronised across workers


# ------------------------------------------------------------------------------------------- data


def select_synthetic(synthetic, real_counts, max_per_class: int = 0, fill_to: int = 0,
                     generator: torch.Generator | None = None):
    """Per-class quotas: at most ``max_per_class`` (0 = no cap) and at most ``fill_to - n_c`` (0 = no cap).

    ``synthetic`` is an ``ImageSet``; the kept subset is drawn at random (seeded by ``generator``).
    """
    from .stream import quotas

    labels = np.asarray(synthetic.labels)
    q = quotas(np.bincount(labels, minlength=synthetic.num_classes), real_counts, max_per_class, fill_to)
    keep: list[np.ndarray] = []
    for c in range(synthetic.num_classes):
        idx = np.where(labels == c)[0]
        if q[c] < len(idx):
            perm = torch.randperm(len(idx), generator=generator).numpy()
            idx = np.sort(idx[perm[:q[c]]])
        keep.append(idx)
    return synthetic.subset(np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64))


def load_synthetic(uri: str, image_size: int, channels: int, num_classes: int | None = None, on_bad: str = "error"):
    """Synthetic ``ImageSet`` from WebDataset shards (local dir or ``s3://`` prefix), via the data layer."""
    from ..data.shards import read_shards  # the data layer's shard reader (no second reader here)

    return read_shards(uri, image_size=image_size, channels=channels, on_bad=on_bad, num_classes=num_classes)


def augment(x: Tensor, generator: torch.Generator, crop: bool, flip: bool) -> Tensor:  # [B,C,H,W] in [-1,1]
    """Random crop with ``pad = max(1, H // 8)`` black padding (4 px at 32x32) and optional h-flip."""
    B, C, H, W = x.shape
    dev = generator.device
    if crop:
        p = max(1, H // 8)
        xp = torch.nn.functional.pad(x, (p, p, p, p), value=-1.0)
        oy = torch.randint(0, 2 * p + 1, (B,), generator=generator, device=dev).to(x.device)
        ox = torch.randint(0, 2 * p + 1, (B,), generator=generator, device=dev).to(x.device)
        rows = (oy[:, None] + torch.arange(H, device=x.device))[:, None, :, None].expand(B, C, H, W + 2 * p)
        xp = xp.gather(2, rows)
        cols = (ox[:, None] + torch.arange(W, device=x.device))[:, None, None, :].expand(B, C, H, W)
        x = xp.gather(3, cols)
    if flip:
        m = (torch.rand(B, generator=generator, device=dev) < 0.5).to(x.device)
        x = torch.where(m[:, None, None, None], x.flip(3), x)
    return x


def _augment_flags(mode: str, channels: int) -> tuple[bool, bool]:
    if mode == "auto":
        mode = "crop_flip" if channels == 3 else "crop"   # flipping digits / letters changes them
    return mode in ("crop", "crop_flip"), mode == "crop_flip"


# ------------------------------------------------------------------------------------------- train


SYNC_BN_DEVICES = ("cuda", "xpu", "hpu")   # device types PyTorch's SyncBatchNorm runs on (it raises on CPU)


def with_sync_batchnorm(model: nn.Module, world: World) -> tuple[nn.Module, bool]:
    """``(model, converted)``: BatchNorm -> ``SyncBatchNorm`` when ``world.world_size > 1`` on an accelerator.

    Multi-worker CPU training (gloo) keeps per-worker statistics, because PyTorch's SyncBatchNorm
    refuses CPU tensors. The state_dict keys are the same, so checkpoints load into the plain model.
    """
    if world.world_size <= 1 or torch.device(world.device).type not in SYNC_BN_DEVICES:
        return model, False
    return nn.SyncBatchNorm.convert_sync_batchnorm(model), True


def _classifier_cfg(cfg: Any) -> tuple[ClassifierConfig, int, dict[str, Any]]:
    if isinstance(cfg, ClassifierConfig):
        return cfg, 0, {"classifier": to_dict(cfg)}
    from ..config import public_dict

    return cfg.classifier, int(cfg.seed), public_dict(cfg)


def loop_spec(c: ClassifierConfig, n_train: int, seed: int = 0) -> LoopSpec:
    """The classifier's :class:`LoopSpec`, every field from ``c``: epochs -> steps, fractional warm-up and
    milestones -> steps. ``seed`` is the root ``seed`` (0 when only a ``ClassifierConfig`` is given)."""
    steps = math.ceil(c.epochs * n_train / (c.batch_size * c.grad_accum)) if c.epochs > 0 else c.steps
    return LoopSpec(steps=steps, lr=c.lr, optimizer=c.optimizer, momentum=c.momentum, weight_decay=c.weight_decay,
                    warmup=int(round(c.warmup * steps)), milestones=tuple(int(round(m * steps)) for m in c.milestones),
                    gamma=c.lr_gamma, grad_clip=c.grad_clip, ema_decay=c.ema_decay, amp=c.amp, grad_accum=c.grad_accum,
                    log_every=c.log_every, ckpt_every=c.ckpt_every, keep_checkpoints=c.keep_checkpoints, seed=seed,
                    desc=f"classifier[{c.arch}/{c.method}]")


STATS_CHUNK = 4096   # rows of the memory-mapped real set read at a time (normalisation stats, feature bank)


def norm_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) in model range [-1, 1] of uint8 ``[N,H,W,C]`` images, streamed over row chunks:
    exact integer sums of pixel values (no float summation order), std unbiased as ``torch.std``."""
    C = images.shape[-1]
    s1, s2, n = np.zeros(C, np.float64), np.zeros(C, np.float64), 0
    for a in range(0, len(images), STATS_CHUNK):
        chunk = np.asarray(images[a:a + STATS_CHUNK]).reshape(-1, C)
        for ch in range(C):
            h = np.bincount(chunk[:, ch], minlength=256).astype(np.int64)
            v = np.arange(256, dtype=np.int64)
            s1[ch] += float((h * v).sum())
            s2[ch] += float((h * v * v).sum())
        n += len(chunk)
    mean = s1 / max(n, 1)
    var = (s2 - s1 * mean) / max(n - 1, 1)
    return mean / 127.5 - 1.0, np.sqrt(np.maximum(var, 0.0)) / 127.5


def _set_norm(model: Classifier, images: np.ndarray) -> None:
    mean, std = norm_stats(images)
    with torch.no_grad():
        model.norm.mean.copy_(torch.as_tensor(mean, dtype=torch.float32).view_as(model.norm.mean))
        model.norm.std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-3).view_as(model.norm.std))


def rows(images: np.ndarray, idx: np.ndarray) -> Tensor:
    """Model-range float ``[B,C,H,W]`` of rows ``idx`` of uint8 ``[N,H,W,C]`` (a memory map: only those rows read)."""
    return to_model_range(np.asarray(images[np.asarray(idx, np.int64)]))


class PoolBatches:
    """Batches drawn from real (+ an in-memory synthetic ``ImageSet``) as one pool, gathered by index per step."""

    def __init__(self, real, syn, c: ClassifierConfig, method, seed: int, world: World) -> None:
        self.parts = [real.images] + ([syn.images] if syn is not None else [])
        self.n_real = len(real)
        self.y = np.concatenate([np.asarray(real.labels, np.int64)]
                                + ([np.asarray(syn.labels, np.int64)] if syn is not None else []))
        self.w = torch.cat([torch.ones(self.n_real), torch.full((len(self.y) - self.n_real,), c.synthetic_weight)])
        self.steps = StepBatches(len(self.y), c.batch_size, seed, world.rank, world.world_size,
                                 weights=method.sample_weights(self.y))

    def __call__(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        idx = self.steps.indices(step).numpy()
        out = torch.empty((len(idx), *rows(self.parts[0], idx[:0]).shape[1:]))
        real = idx < self.n_real
        if real.any():
            out[torch.from_numpy(real)] = rows(self.parts[0], idx[real])
        if (~real).any():
            out[torch.from_numpy(~real)] = rows(self.parts[1], idx[~real] - self.n_real)
        return out, torch.from_numpy(self.y[idx]), self.w[idx]


class StreamBatches:
    """Real rows gathered from the memory map by index + synthetic samples from this rank's stream, per step.

    The synthetic share of a global batch of B is ``p = mass_syn / (mass_syn + mass_real)`` (masses: the
    method's draw weights, i.e. counts unless it re-samples), spread deterministically: step s holds
    ``floor((s+1)Bp) - floor(sBp)`` synthetic slots, so every position is a pure function of the step
    (resume-safe). Real slots continue seeded per-epoch permutations of the real set (weighted draws when
    the method re-samples); rank r takes global slots r, r+W, ... of both parts. Re-sampling reaches the
    synthetic part by thinning the stream per class (``SyntheticStream.accept``).
    """

    def __init__(self, real, spec: SyntheticSpec, c: ClassifierConfig, method, seed: int, world: World) -> None:
        from .stream import SyntheticStream

        self.real, self.B, self.seed, self.rank, self.W = real, c.batch_size, seed, world.rank, world.world_size
        self.y_real = np.asarray(real.labels, np.int64)
        self.omega = c.synthetic_weight
        S = spec.kept_counts
        pool = np.concatenate([self.y_real, spec.labels_like()])
        w0 = method.sample_weights(pool)
        w = np.ones(len(pool)) if w0 is None else np.asarray(w0, np.float64)
        self.p = float(w[len(self.y_real):].sum() / w.sum())
        self.real_w = None if w0 is None else torch.from_numpy(w[:len(self.y_real)])
        accept = None
        if self.real_w is not None:
            first = len(self.y_real) + np.concatenate([[0], np.cumsum(S)[:-1]])
            wc = np.where(S > 0, w[np.minimum(first, len(w) - 1)], 0.0)
            accept = wc / wc.max() if wc.max() > 0 else None
        self.stream = SyntheticStream(spec, world.rank, world.world_size, seed, accept=accept)
        self._perm_epoch, self._perm = -1, None
        self._at: tuple[int, int] | None = None     # (next step, its synthetic offset)

    def _syn_slots(self, steps: np.ndarray) -> np.ndarray:
        bp = self.B * self.p
        return (np.floor((steps + 1) * bp) - np.floor(steps * bp)).astype(np.int64)

    def _mine(self, slots: np.ndarray) -> np.ndarray:        # this rank's share of global slots 0..k-1
        return np.maximum(0, (slots - self.rank + self.W - 1) // self.W)

    def _real_global(self, step: int, k: int) -> np.ndarray:
        if k <= 0:
            return np.zeros(0, np.int64)
        if self.real_w is not None:
            g = torch.Generator().manual_seed(self.seed * 15_485_863 + step)
            return torch.multinomial(self.real_w, k, replacement=True, generator=g).numpy()
        n = len(self.y_real)
        start = step * self.B - int(np.floor(step * self.B * self.p))
        out: list[int] = []
        while len(out) < k:
            epoch, offset = divmod(start, n)
            if epoch != self._perm_epoch:
                g = torch.Generator().manual_seed(self.seed * 15_485_863 + epoch)
                self._perm, self._perm_epoch = torch.randperm(n, generator=g).numpy(), epoch
            take = min(k - len(out), n - offset)
            out.extend(self._perm[offset:offset + take].tolist())
            start += take
        return np.asarray(out, np.int64)

    def _offset(self, step: int) -> int:
        """Synthetic samples this rank consumed before ``step`` (O(1) for consecutive steps, O(step) on a jump)."""
        if self._at is None or self._at[0] != step:
            self._at = (step, int(self._mine(self._syn_slots(np.arange(step))).sum()) if step else 0)
        at = self._at[1]
        self._at = (step + 1, at + int(self._mine(self._syn_slots(np.asarray([step])))[0]))
        return at

    def __call__(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        b_syn = int(self._syn_slots(np.asarray([step]))[0])
        idx = self._real_global(step, self.B - b_syn)[self.rank::self.W]
        at = self._offset(step)
        imgs, ys = self.stream.take(int(self._mine(np.asarray([b_syn]))[0]), at)
        x = torch.cat([rows(self.real.images, idx), to_model_range(imgs)])
        y = torch.from_numpy(np.concatenate([self.y_real[idx], ys]))
        w = torch.cat([torch.ones(len(idx)), torch.full((len(ys),), self.omega)])
        return x, y, w


def train_classifier(cfg: Any, data: Any, world: World, ckpt_dir: str | None = None, synthetic: Any = None, *,
                     every: list[tuple[int, Callable]] | None = None, progress: bool = True,
                     resume: bool = True) -> ClassifierResult:
    """Train ``cfg.classifier`` (a root ``Config`` or a ``ClassifierConfig``) on ``data`` (``LTDataset``
    or the train ``ImageSet``) plus optional ``synthetic``: a :class:`~ltaug.classify.stream.SyntheticSpec`
    (streamed from its shards by each worker, quotas already in the spec) or an in-memory ``ImageSet``
    (library use; quotas from the config are applied here).

    Real images stay where they are (a memory map for a dataset artifact): each step gathers its rows by
    index. Returns the trained model (eval mode, on ``world.device``), its feature bank and the final
    checkpoint URI (``ckpt_dir/ckpt-<step>.pt``, feature bank inside; None without ``ckpt_dir``).
    Metrics go through ``world.report`` (the loop logs every ``classifier.log_every`` steps).
    """
    from .stream import SyntheticSpec

    c, seed, config_dict = _classifier_cfg(cfg)
    real = getattr(data, "train", data)
    K = real.num_classes
    device = world.device
    y_real = np.asarray(real.labels, np.int64)
    streamed = isinstance(synthetic, SyntheticSpec)
    if streamed:
        if synthetic.num_classes != K or (synthetic.image_size, synthetic.channels) != (real.image_size, real.channels):
            raise ValueError(f"synthetic shards {synthetic.uri} ({synthetic.num_classes} classes, "
                             f"{synthetic.image_size}px x {synthetic.channels} channels) do not match the real data "
                             f"({K} classes, {real.image_size}px x {real.channels} channels)")
        syn_counts = synthetic.kept_counts
    elif synthetic is not None and len(synthetic):
        if int(synthetic.labels.max()) >= K or synthetic.images.shape[1:] != real.images.shape[1:]:
            raise ValueError(f"synthetic data (labels up to {int(synthetic.labels.max())}, images {synthetic.images.shape[1:]}) "
                             f"does not match the real data ({K} classes, images {real.images.shape[1:]})")
        synthetic = select_synthetic(synthetic, real.counts, c.synthetic_max_per_class, c.synthetic_fill_to,
                                     torch.Generator().manual_seed(seed))
        syn_counts = np.bincount(synthetic.labels, minlength=K)
    else:
        synthetic, syn_counts = None, np.zeros(K, np.int64)
    n_syn = int(syn_counts.sum())
    weighted = n_syn > 0

    spec_m = ModelSpec(c.arch, K, real.channels, real.image_size, c.width,
                       normed_linear=METHODS[c.method].normed_linear)   # LDAM: cosine last layer
    with torch.random.fork_rng(devices=[]):   # initialisation is a function of the seed, not global state
        torch.manual_seed(seed)
        model = build_classifier(spec_m)
    _set_norm(model, real.images)
    model, synced = with_sync_batchnorm(model, world)
    spec = loop_spec(c, len(y_real) + n_syn, seed)
    # effective class counts: synthetic samples count omega each (they carry omega of the loss)
    eff = np.bincount(y_real, minlength=K).astype(np.float64) + c.synthetic_weight * syn_counts
    method = make_method(c.method, eff, spec.steps, tau=c.la_tau, drw_start=c.drw_start, drw_beta=c.drw_beta,
                         ldam_max_margin=c.ldam_max_margin, ldam_scale=c.ldam_scale)
    if streamed and n_syn:
        draw = StreamBatches(real, synthetic, c, method, seed, world)
    else:
        draw = PoolBatches(real, synthetic if n_syn else None, c, method, seed, world)
    crop, flip = _augment_flags(c.augment, real.channels)

    def objective(net: nn.Module, step: int, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        xb, yb, wb = draw(step)
        xb = augment(xb.to(device), g, crop, flip)
        yb = yb.to(device)
        logits = net(xb)
        loss = method.mean_loss(logits, yb, step, wb.to(device) if weighted else None)
        return loss, {"train_acc": (logits.argmax(1) == yb).float().mean()}   # read by the loop at log_every

    extra = {"model_spec": spec_m.to_dict(), "method": c.method, "use_ema": c.ema_decay > 0,
             "class_names": list(real.class_names), "num_real": len(y_real), "num_synthetic": n_syn,
             "sync_batchnorm": synced}
    res = fit(model, objective, spec, world, ckpt_dir=ckpt_dir, config=config_dict, kind=CKPT_KIND,
              extra=extra, resume=resume, every=every, progress=progress)
    net = res.ema if res.ema is not None else res.model
    net.eval()
    phi = torch.cat([extract_features(net, rows(real.images, np.arange(a, min(a + STATS_CHUNK, len(y_real)))).to(device),
                                      c.eval_batch_size) for a in range(0, len(y_real), STATS_CHUNK)])
    bank = build_bank(phi, torch.as_tensor(np.array(y_real, dtype=np.int64), device=device), K, c.radius, c.radius_quantile)
    if res.checkpoint and world.is_main:
        ck = ckpt_io.load(res.checkpoint)
        ck["extra"] = {**ck.get("extra", {}), **extra, "feature_bank": bank.state_dict()}
        ckpt_io.save(res.checkpoint, ck)
    return ClassifierResult(model=net, bank=bank, spec=spec_m, checkpoint=res.checkpoint, steps=res.step,
                            history=res.history, num_real=len(y_real), num_synthetic=n_syn, sync_batchnorm=synced)


# ------------------------------------------------------------------------------------------- load


def load_classifier(uri: str, map_location: str | torch.device = "cpu") -> tuple[Classifier, FeatureBank | None]:
    """``(model, bank)`` from a classifier checkpoint file, or the newest valid one in a directory.

    The model is in eval mode and takes images in [-1, 1] (it normalises internally); EMA weights are
    used when the checkpoint kept them. ``bank`` is None only for an intermediate checkpoint written
    before training finished.
    """
    ck = ckpt_io.open_checkpoint(uri, map_location)
    extra = ck.get("extra") or {}
    if ck.get("kind") != CKPT_KIND or "model_spec" not in extra:
        raise ckpt_io.CheckpointError(f"{uri}: not a classifier checkpoint (kind {ck.get('kind')!r})")
    model = build_classifier(ModelSpec(**extra["model_spec"]))
    weights = ck["ema"] if extra.get("use_ema") and ck.get("ema") is not None else ck["model"]
    model.load_state_dict(weights)
    model.to(map_location).eval()
    bank = FeatureBank.from_state_dict(extra["feature_bank"]).to(map_location) if "feature_bank" in extra else None
    return model, bank
