"""The one training loop, shared by diffusion and classifiers.

The loop owns: optimizer, learning-rate schedule (warm-up, optional step decay), gradient clipping,
mixed precision (CUDA only), EMA, gradient accumulation, periodic logging / checkpoints / hooks, resume. What
to optimise is an :class:`Objective`: ``objective(model, step, generator) -> (loss, logs)``. Every random draw
of step ``s`` comes from a generator seeded by ``(seed, s, rank)``, and batches are a pure function
of the step (see :class:`StepBatches`), so resuming gives exactly the same result as never stopping.

Gradient accumulation (``grad_accum = k``): optimizer step ``s`` runs the objective on the *micro-steps*
``s*k .. s*k+k-1`` (each its own batch and generator), backpropagates ``loss / k`` of each and steps once; DDP
all-reduces only on the last micro-step (``no_sync`` before). The effective batch is ``batch size x k x world
size``; schedules (warm-up, milestones, checkpoints, logging) count optimizer steps. ``k = 1`` is the plain loop.

No host synchronisation per step: the finite-loss check, the logged scalars (tensors from the objective are
welcome) and the gradient norm stay on the device, accumulated in float64, and are read every ``log_every``
steps and before each checkpoint -- a non-finite loss is reported then, naming the first step it occurred at,
and never reaches a checkpoint.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint as ckpt_io
from .allocator import keep_freed_memory
from .ema import EMA, unwrap
from .world import World


class Objective(Protocol):
    def __call__(self, model: nn.Module, step: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]: ...


@dataclass(frozen=True)
class LoopSpec:
    """What the loop needs, all required: no defaults here, so the config is the one source of every value.

    Built by one builder per task from its config section: ``ltaug.diffusion.train.loop_spec(cfg)``
    (``train`` + ``seed``) and ``ltaug.classify.trainer.loop_spec(cfg.classifier, n, seed)``.
    """

    steps: int
    lr: float
    optimizer: str                # adam | adamw | sgd
    momentum: float               # sgd only
    weight_decay: float
    warmup: int                   # linear warm-up steps
    milestones: tuple[int, ...]   # lr x gamma at these steps
    gamma: float
    grad_clip: float              # 0 = off
    ema_decay: float              # 0 = off
    amp: bool
    grad_accum: int               # micro-batches per optimizer step (1 = off)
    log_every: int
    ckpt_every: int               # 0 = only at the end
    keep_checkpoints: int
    seed: int
    desc: str                     # progress-bar / error label


@dataclass
class TrainResult:
    model: nn.Module
    ema: nn.Module | None
    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: str | None = None
    resumed_from: int = 0


def step_generator(seed: int, step: int, rank: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1))
    return g


def lr_factor(spec: LoopSpec, step: int) -> float:
    f = 1.0
    if spec.warmup > 0 and step < spec.warmup:
        f = (step + 1) / spec.warmup
    for m in spec.milestones:
        if step >= m:
            f *= spec.gamma
    return f


def make_optimizer(spec: LoopSpec, params, device: torch.device | str = "cpu") -> torch.optim.Optimizer:
    """Adam/AdamW use the fused kernel on CUDA (one launch for all parameters); elsewhere torch's default."""
    fused = {"fused": True} if torch.device(device).type == "cuda" else {}
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay, **fused)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay, **fused)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    raise ValueError(f"unknown optimizer {spec.optimizer!r}; choose adam, adamw or sgd")


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


def fit(model: nn.Module, objective: Objective, spec: LoopSpec, world: World, *,
        ckpt_dir: str | None = None, config: dict[str, Any] | None = None, kind: str = "model",
        extra: dict[str, Any] | None = None, resume: bool = True,
        hooks: dict[int, Callable[["TrainState"], None]] | None = None,
        every: list[tuple[int, Callable[["TrainState"], None]]] | None = None,
        progress: bool = True) -> TrainResult:
    """Train ``model`` for ``spec.steps`` steps of ``objective``; resume from ``ckpt_dir`` when it holds a checkpoint.

    ``every``: ``[(n, fn)]`` calls ``fn(state)`` on the main rank every n steps and at the end
    (sample grids, evaluations). Checkpoints are written by the main rank every ``spec.ckpt_every``
    steps and at the end, then announced through ``world.report``.
    """
    keep_freed_memory()   # each step reuses the last step's activation pages (glibc; see ltaug.train.allocator)
    device = world.device
    net = world.wrap(model)
    if spec.grad_accum < 1:
        raise ValueError(f"{spec.desc}: grad_accum must be >= 1, got {spec.grad_accum}")
    optimizer = make_optimizer(spec, [p for p in net.parameters() if p.requires_grad], device)
    ema = EMA(net, spec.ema_decay) if spec.ema_decay > 0 else None
    scaler_on = spec.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=scaler_on)
    start = 0
    resumed_uri = None
    if resume and ckpt_dir:
        state = ckpt_io.latest_valid(ckpt_dir, map_location=device)
        if state is not None:
            resumed_uri = state["_uri"]
            unwrap(net).load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if ema is not None and state.get("ema") is not None:
                ema.load_state_dict(state["ema"])
            ckpt_io.set_rng_state(state["rng"])
            start = int(state["step"])
    result = TrainResult(model=unwrap(net), ema=ema.model if ema else None, step=start, resumed_from=start)
    st = TrainState(net=net, ema=ema, step=start, spec=spec, world=world, result=result)

    def save(step: int) -> None:
        if not (ckpt_dir and world.is_main):
            return
        uri = ckpt_io.path_for(ckpt_dir, step)
        ckpt_io.save(uri, {"kind": kind, "config": config or {}, "model": unwrap(net).state_dict(),
                           "ema": ema.state_dict() if ema else None, "optimizer": optimizer.state_dict(),
                           "step": step, "rng": ckpt_io.rng_state(), "extra": extra or {}})
        ckpt_io.prune(ckpt_dir, spec.keep_checkpoints)
        result.checkpoint = uri

    bar = tqdm(total=spec.steps, initial=start, desc=spec.desc, disable=not (progress and world.is_main),
               dynamic_ncols=True, mininterval=1.0)
    net.train()
    window: dict[str, torch.Tensor] = {}
    n_window = 0
    k_acc = spec.grad_accum
    first_bad = torch.full((), -1, dtype=torch.long, device=device)   # first step with a non-finite loss

    def check_finite() -> None:          # the one host sync of the finite check: at log / checkpoint boundaries
        bad = int(first_bad)
        if bad >= 0:
            raise FloatingPointError(f"{spec.desc}: loss is not finite at step {bad}")

    t0 = time.perf_counter()
    for step in range(start, spec.steps):
        for group in optimizer.param_groups:
            group["lr"] = spec.lr * lr_factor(spec, step)
        optimizer.zero_grad(set_to_none=True)
        loss_sum = None
        for j in range(k_acc):
            micro = step * k_acc + j
            g = step_generator(spec.seed, micro, world.rank, device)
            sync = j == k_acc - 1 or not hasattr(net, "no_sync")
            with (contextlib.nullcontext() if sync else net.no_sync()):
                with _autocast(device, spec.amp):
                    loss, logs = objective(net, micro, g)
                scaler.scale(loss / k_acc if k_acc > 1 else loss).backward()
            d = loss.detach().double()
            loss_sum = d if loss_sum is None else loss_sum + d
            for key, v in logs.items():
                v = v.detach().double() if torch.is_tensor(v) else float(v)
                window[key] = window.get(key, 0.0) + (v / k_acc if k_acc > 1 else v)
        loss_mean = loss_sum / k_acc if k_acc > 1 else loss_sum
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss_mean), torch.full_like(first_bad, step), first_bad)
        if spec.grad_clip > 0:
            scaler.unscale_(optimizer)
            gn = torch.nn.utils.clip_grad_norm_(net.parameters(), spec.grad_clip)
            window["grad_norm"] = window.get("grad_norm", 0.0) + gn.detach().double()
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update(net)
        window["loss"] = window.get("loss", 0.0) + loss_mean
        n_window += 1
        st.step = step + 1
        bar.update(1)
        is_ckpt = bool(spec.ckpt_every and st.step % spec.ckpt_every == 0) or st.step == spec.steps
        if st.step % spec.log_every == 0 or st.step == spec.steps:
            check_finite()
            metrics = {k: float(v) / n_window for k, v in window.items()}
            metrics["lr"] = optimizer.param_groups[0]["lr"]
            metrics["steps_per_s"] = n_window / max(time.perf_counter() - t0, 1e-9)
            result.history.append({"step": st.step, **metrics})
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            window, n_window, t0 = {}, 0, time.perf_counter()
            if not is_ckpt:
                world.report(metrics, st.step, None)
            st.last_metrics = metrics
        if is_ckpt:
            check_finite()
            save(st.step)
            world.report(st.last_metrics or {}, st.step, ckpt_dir)
        for n, fn in every or []:
            if world.is_main and n and (st.step % n == 0) and st.step != spec.steps:
                fn(st)
    bar.close()
    if start >= spec.steps and ckpt_dir and world.is_main:
        result.checkpoint = resumed_uri              # the newest *valid* checkpoint, the one resumed from
    for _, fn in every or []:
        if world.is_main:
            fn(st)
    result.step = st.step
    return result


@dataclass
class TrainState:
    net: nn.Module
    ema: EMA | None
    step: int
    spec: LoopSpec
    world: World
    result: TrainResult
    last_metrics: dict[str, float] | None = None

    @property
    def eval_model(self) -> nn.Module:
        """EMA weights when kept, else the live model (unwrapped)."""
        return self.ema.model if self.ema is not None else unwrap(self.net)


class StepBatches:
    """Batches as a pure function of the step: epoch-wise seeded permutations (or weighted draws).

    ``indices(step)`` returns this rank's disjoint slice of the global batch of ``step``.
    ``weights`` (per sample) switches to draws with replacement (class-balanced re-sampling).
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 weights: torch.Tensor | None = None) -> None:
        if n <= 0:
            raise ValueError("cannot draw batches from an empty dataset")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.weights = None if weights is None else weights.double() / weights.double().sum()
        self._perm_epoch = -1
        self._perm: torch.Tensor | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 15_485_863 + epoch)
            self._perm = torch.randperm(self.n, generator=g)
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def global_indices(self, step: int) -> torch.Tensor:
        B = self.batch_size
        if self.weights is not None:
            g = torch.Generator().manual_seed(self.seed * 15_485_863 + step)
            return torch.multinomial(self.weights, B, replacement=True, generator=g)
        start = step * B
        out = []
        while len(out) < B:
            epoch, offset = divmod(start, self.n)
            perm = self._permutation(epoch)
            take = min(B - len(out), self.n - offset)
            out.extend(perm[offset:offset + take].tolist())
            start += take
        return torch.tensor(out, dtype=torch.long)

    def indices(self, step: int) -> torch.Tensor:
        return self.global_indices(step)[self.rank::self.world_size]

    def epoch_of(self, step: int) -> float:
        return step * self.batch_size / self.n


def steps_for_epochs(epochs: float, n: int, batch_size: int) -> int:
    return max(1, math.ceil(epochs * n / batch_size))
