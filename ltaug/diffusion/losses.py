"""Long-tail diffusion loss terms that compose by weight.

A term returns a per-sample loss ``[B]`` and declares the forward passes it needs (``cond``: the
batch's labels, or the null label on label-dropped batches; ``uncond``: the null label; ``prior``:
labels drawn from the class frequencies) and whether it needs bottleneck features. Terms never call
the model: a :class:`LossContext` runs every needed pass once, all of them concatenated into one
forward, and memoises the result. :class:`CompositeLoss` weights (constant or ``step -> weight``),
reduces and returns per-term means for logging.

Terms and sources (maths in algorithms.md):
- ``mse``: denoising loss (DDPM, Ho et al. 2020).
- ``cbdm``: class-balancing regulariser (CBDM, Qin et al. CVPR 2023, §1.1).
- ``aid``: AID-biased loss (DiffuLT, Shao et al. NeurIPS 2024, §2.3, reconstructed: see AIDLoss).
- ``infonce``: InfoNCE on bottleneck features (CCUA, arXiv 2507.09052, §3.1): the unsupervised loss with
  the batch's negatives gathered across workers (as shipped), a negative queue, or the supervised variant.
- ``cond_uncond``: conditional-unconditional alignment MSE (CCUA §3.2).

Distributed training: a term that needs the whole global batch (InfoNCE's negatives) calls
``ctx.gather`` (``World.all_gather``: every rank's rows, differentiable), so N workers x B/N samples give
the loss of 1 worker x B samples. CCUA's own code computes the InfoNCE per GPU (``nn.DataParallel`` in
CCUA-DDPM, DDP without a gather in CCUA-SiT), i.e. with B/N - 1 negatives per sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Union

import torch
import torch.nn.functional as Fn
from torch import Tensor, nn

from .schedule import NoiseSchedule

PASSES = ("cond", "uncond", "prior")
LABEL_DROP_P = 0.1         # classifier-free whole-batch label drop (CBDM, CCUA)
CBDM_COMMIT = 0.25         # CBDM commitment weight gamma (VQ-VAE style), §1.1
INFONCE_TEMPERATURE = 0.1  # CCUA (info-nce-pytorch default, used by CCUA-DDPM clr.py::uncond_info_nce), §3.1
INFONCE_MODES = ("batch", "queue", "supervised")
# CCUA-DDPM clr.py::CLRQueueLoss (commented out upstream): "K=1024, T=0.1 for CIFAR10LT" (its signature's
# defaults, K=65536 and T=0.07, are MoCo's ImageNet values). Our temperature is shared with the batch mode.
INFONCE_QUEUE_SIZE = 1024
AID_ALPHA = 0.1            # DiffuLT Table 10 default, §2.3


class FeatureSpace(Protocol):
    """A frozen classifier's feature space (DiffuLT §2.2): ``extractor(x in [-1,1] [B,C,H,W]) -> [B,D]``,
    class centres ``centers [C,D]`` and ID radii ``radii [C]`` (``d_f``)."""

    centers: Tensor
    radii: Tensor

    def extractor(self, x: Tensor) -> Tensor: ...


@dataclass
class SimpleFeatureSpace:
    """A :class:`FeatureSpace` from a callable and tensors (what ``load_classifier`` gives: ``model.features``, bank);
    ``id_radii [C]``: the AID loss's ID-side radius when it is not ``radii`` (``loss.aid_radius_quantile``)."""

    extractor: Callable[[Tensor], Tensor]
    centers: Tensor
    radii: Tensor
    id_radii: Tensor | None = None


@dataclass
class Pred:
    eps: Tensor                  # [B,C,H,W]
    features: Tensor | None      # bottleneck [B,...] when requested


# ------------------------------------------------------------------------------------------------
# The context: one batched forward for every needed pass, memoised.
# ------------------------------------------------------------------------------------------------
class LossContext:
    """The state of one micro-batch: ``x0, y, t, noise, x_t``, the label drop flag, prior labels, and
    memoised predictions. ``forwards`` counts model calls (tests check that no pass runs twice).
    ``gather`` joins this rank's rows with every other rank's (``World.all_gather``); ``generator`` feeds
    the draws a term makes itself."""

    def __init__(self, model: nn.Module, schedule: NoiseSchedule, x0: Tensor, y: Tensor, t: Tensor,
                 noise: Tensor, *, num_classes: int, dropped: bool = False, prior_y: Tensor | None = None,
                 passes: tuple[str, ...] = ("cond",), features: bool = False,
                 gather: Callable[[Tensor], Tensor] | None = None, generator: torch.Generator | None = None) -> None:
        self.model, self.schedule = model, schedule
        self.x0, self.y, self.t, self.noise = x0, y, t, noise
        self.num_classes, self.dropped, self.prior_y = num_classes, dropped, prior_y
        # every rank's rows of a per-sample tensor, differentiable (``World.all_gather``); identity on one process
        self.gather: Callable[[Tensor], Tensor] = gather if gather is not None else (lambda v: v)
        self.generator = generator  # draws made inside a term (the supervised InfoNCE's keys)
        self.x_t = schedule.q_sample(x0, t, noise)
        self.w_t = schedule.time_weight(t, like=x0)  # t/T [B]
        self._want = tuple(p for p in PASSES if p in passes)
        self._features = features
        self._preds: dict[str, Pred] = {}
        self.forwards = 0

    @property
    def B(self) -> int:
        return self.x0.shape[0]

    def labels_for(self, name: str) -> Tensor:
        null = torch.full_like(self.y, self.num_classes)
        if name == "cond":
            return null if self.dropped else self.y
        if name == "uncond":
            return null
        if name == "prior":
            if self.prior_y is None:
                raise ValueError("the prior pass needs prior labels (class frequencies)")
            return self.prior_y
        raise KeyError(f"unknown pass {name!r}; passes are {PASSES}")

    def _distinct(self, names: tuple[str, ...]) -> list[str]:
        # On label-dropped batches the cond pass *is* the unconditional pass: run it once.
        out = []
        for n in names:
            if n == "uncond" and self.dropped and "cond" in names:
                continue
            out.append(n)
        return out

    def _run(self, names: tuple[str, ...]) -> None:
        names = tuple(n for n in self._distinct(names) if n not in self._preds)
        if not names:
            return
        k = len(names)
        x = self.x_t if k == 1 else self.x_t.repeat(k, 1, 1, 1)
        t = self.t if k == 1 else self.t.repeat(k)
        y = torch.cat([self.labels_for(n) for n in names])
        out = self.model(x, t, y, return_features=self._features)
        eps, feats = out if self._features else (out, None)
        self.forwards += 1
        for i, n in enumerate(names):
            sl = slice(i * self.B, (i + 1) * self.B)
            self._preds[n] = Pred(eps[sl], feats[sl] if feats is not None else None)
        if self.dropped and "cond" in self._preds:
            self._preds.setdefault("uncond", self._preds["cond"])

    def pred(self, name: str) -> Pred:
        if name not in self._preds:
            self._run(self._want if name in self._want else (name,))
        return self._preds[name]


# ------------------------------------------------------------------------------------------------
# Terms
# ------------------------------------------------------------------------------------------------
def _sq(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).pow(2).flatten(1).mean(1)


class MSELoss:
    """DDPM denoising loss ``||eps_theta(x_t, t, y) - eps||^2`` (mean over pixels)."""

    name, passes, needs_features = "mse", ("cond",), False

    def __call__(self, ctx: LossContext) -> Tensor:
        return _sq(ctx.pred("cond").eps, ctx.noise)


class CBDMLoss:
    """CBDM regulariser (Qin et al. 2023): ``(t/T)[ ||h - sg h'||^2 + gamma ||sg h - h'||^2 ]`` with
    ``h' = eps_theta(x_t, t, y')``, ``y' ~ p`` (empirical class frequencies from scratch, uniform to
    fine-tune). The term weight is tau. Zero on label-dropped batches (the code skips them)."""

    name, passes, needs_features = "cbdm", ("cond", "prior"), False

    def __init__(self, commit: float = CBDM_COMMIT) -> None:
        self.commit = commit

    def __call__(self, ctx: LossContext) -> Tensor:
        if ctx.dropped:
            return ctx.x0.new_zeros(ctx.B)
        h, hp = ctx.pred("cond").eps, ctx.pred("prior").eps
        return ctx.w_t * (_sq(h, hp.detach()) + self.commit * _sq(h.detach(), hp))


AID_GATES = ("half", "alpha_bar", "none")
AID_NORM_MOMENTUM = 0.99   # running means of loss.aid_normalize (an EMA over steps)


class AIDLoss:
    """DiffuLT AID-biased loss, **reconstructed** (§2.3): our sources for the paper give no equation, only that
    the frozen feature extractor judges the denoised prediction and the loss "penalises ID and OOD" generations
    (bias toward AID, ``d_f < d <= 2 d_f``). With ``x0_hat = clip(Tweedie(x_t, eps_theta))``,
    ``d = ||phi(x0_hat) - mu_y||``:  ``L_AID = 1[t >= t_id] relu(r_id - d) + g(t) relu(d - 2 d_f)``.

    - ID side, only for ``t >= t_id = aid_id_from * T``: at small t x0_hat is a reconstruction of the real
      image, which is ID (``classifier.radius=max``: d_f = the largest real distance), so an ID penalty there
      fights the eps-MSE and pushes correct reconstructions out (adversarially, through the frozen
      classifier); the AID bias belongs where the model generates. ``r_id``: the bank's d_f, or ``id_radii``
      (a quantile of the real distances, ``loss.aid_radius_quantile``).
    - OOD side: never penalises a real image (d <= d_f); ``gate`` g because x0_hat is meaningless at large t:
      ``half`` keeps t < T/2, ``alpha_bar`` weights by alpha_bar_t, ``none`` keeps all.

    A correct reconstruction at ``t < t_id`` costs nothing. The gradient reaches theta through x0_hat. Applies
    on label-dropped batches too (x_t is still of class y). ``normalize`` (``loss.aid_normalize``): the term is
    in feature units, the eps-MSE in pixel units (~1 at init, ~0.03 trained), so alpha=0.1 is not "10 % of the
    MSE" (train_diffusion's ``aid_calibration`` measures it); the per-sample term is multiplied by
    ``sg(m_mse / m_aid)``, EMAs (momentum 0.99, over steps, not checkpointed) of the batch eps-MSE and AID
    means, so alpha is the AID term's share of the MSE's magnitude. Swap this class in :data:`TERMS` for the
    paper's equation."""

    name, passes, needs_features = "aid", ("cond",), False

    def __init__(self, space: FeatureSpace, gate: str = "half", id_from: float = 0.5,
                 id_radii: Tensor | None = None, normalize: bool = False) -> None:
        if gate not in AID_GATES:
            raise ValueError(f"loss.aid_gate: unknown {gate!r}; choose half, alpha_bar or none")
        if not 0.0 <= id_from <= 1.0:
            raise ValueError(f"loss.aid_id_from: {id_from} must be a fraction of T in [0, 1]")
        if id_radii is not None and id_radii.shape != space.radii.shape:
            raise ValueError(f"AID id_radii {tuple(id_radii.shape)} must match the feature bank's radii "
                             f"{tuple(space.radii.shape)}")
        self.space, self.gate, self.id_from, self.normalize = space, gate, id_from, normalize
        self.id_radii = id_radii
        self.m_mse: Tensor | None = None    # detached 0-d tensors on the loss's device (no host sync per step)
        self.m_aid: Tensor | None = None

    def sides(self, ctx: LossContext) -> tuple[Tensor, Tensor, Tensor]:
        """``(id_side [B], ood_side [B], d [B])``, each side with its time gate applied."""
        x0_hat = ctx.schedule.eps_to_x0(ctx.x_t, ctx.t, ctx.pred("cond").eps).clamp(-1, 1)
        phi = self.space.extractor(x0_hat)
        mu = self.space.centers.to(phi)[ctx.y]
        d_f = self.space.radii.to(phi)[ctx.y]
        r_id = (self.id_radii if self.id_radii is not None else self.space.radii).to(phi)[ctx.y]
        d = (phi - mu).norm(dim=1)
        t_id = self.id_from * ctx.schedule.T
        id_side = Fn.relu(r_id - d) * (ctx.t >= t_id).to(d.dtype)
        ood_side = Fn.relu(d - 2 * d_f)
        if self.gate == "half":
            ood_side = ood_side * (ctx.t < ctx.schedule.T // 2).to(d.dtype)
        elif self.gate == "alpha_bar":
            ood_side = ood_side * ctx.schedule.alpha_bar.to(ctx.t.device)[ctx.t].to(d)   # gathered on device
        return id_side, ood_side, d

    def __call__(self, ctx: LossContext) -> Tensor:
        id_side, ood_side, _ = self.sides(ctx)
        loss = id_side + ood_side
        if self.normalize:
            loss = loss * self._scale(ctx, loss)
        return loss

    def _scale(self, ctx: LossContext, loss: Tensor) -> Tensor:
        mse = _sq(ctx.pred("cond").eps.detach(), ctx.noise).mean().double()
        aid = loss.detach().mean().double()
        k = AID_NORM_MOMENTUM
        self.m_mse = mse if self.m_mse is None else k * self.m_mse + (1 - k) * mse
        self.m_aid = aid if self.m_aid is None else k * self.m_aid + (1 - k) * aid
        return (self.m_mse / self.m_aid.clamp_min(1e-8)).to(loss.dtype)


class InfoNCELoss:
    """CCUA InfoNCE (§3.1) on the bottleneck features ``h_mid`` of one pass, ``z = normalize(flatten(h_mid))``,
    weighted by ``w_t = t/T`` (CCUA's ``adaptive_weight(t, tau=1) = (t/T)^1``). Three modes of CCUA-DDPM's
    ``clr.py``; the negatives come from the *global* batch (``ctx.gather``), so the value does not depend on
    how the batch is split across workers:

    - ``batch`` (UCL, the loss CCUA trains with, ``uncond_info_nce(h_unc, h_unc)``): unconditional pass,
      query = positive key = the sample itself, negatives = every other sample, gradients through query and
      keys: ``l_i = logsumexp_j(z_i.z_j / tau) - z_i.z_i / tau`` over the N gathered samples j (self included
      once, as the positive). Also applied on label-dropped batches (the code does).
    - ``queue`` (``CLRQueueLoss``, commented out upstream): unconditional pass, positive = itself, negatives =
      a FIFO queue ``Q [K,D]`` of past batches' normalised keys, **detached** (no gradient), initialised with
      random unit vectors; the global batch's keys are enqueued after the loss (MoCo's ``concat_all_gather``,
      commented out upstream, is what makes it split-invariant here). ``l_i = 2 tau [logsumexp(z_i.z_i/tau,
      z_i.Q^T/tau) - z_i.z_i/tau]`` (the code's ``CrossEntropy * 2T``). The queue is state of this term: it is
      not in the checkpoint, so a resumed run starts it again from random unit vectors.
    - ``supervised`` (``cond_info_nce(f, y)``, unused upstream): conditional pass (upstream never calls it;
      its main forward returns the conditional ``latent`` unused), positive = one uniform draw among the
      global batch's samples of the same label (itself included), negatives = N draws with replacement among
      the samples of other labels; with no sample of another label the negatives are zero vectors, logit 0
      (as the code's zero-initialised keys). Draws come from ``ctx.generator``: split-invariant in
      distribution, not draw for draw.
    """

    name, needs_features = "infonce", True

    def __init__(self, temperature: float = INFONCE_TEMPERATURE, mode: str = "batch",
                 queue_size: int = INFONCE_QUEUE_SIZE, seed: int = 0) -> None:
        if mode not in INFONCE_MODES:
            raise ValueError(f"loss.infonce_mode: unknown {mode!r}; choose one of {list(INFONCE_MODES)}")
        self.temperature, self.mode, self.K, self.seed = temperature, mode, queue_size, seed
        self.passes = ("cond",) if mode == "supervised" else ("uncond",)
        self.queue: Tensor | None = None  # [K, D] unit rows (mode == "queue")
        self.ptr = 0

    def __call__(self, ctx: LossContext) -> Tensor:
        z = Fn.normalize(ctx.pred(self.passes[0]).features.flatten(1), dim=1)  # [B, D]
        tau = self.temperature
        if self.mode == "batch":
            logits = z @ ctx.gather(z).t() / tau                                 # [B, N]
            loss = torch.logsumexp(logits, dim=1) - (z * z).sum(1) / tau
        elif self.mode == "queue":
            loss = self._queue_loss(z, ctx)
        else:
            loss = self._supervised(z, ctx)
        return ctx.w_t * loss

    def _queue_loss(self, z: Tensor, ctx: LossContext) -> Tensor:
        tau = self.temperature
        if self.queue is None:
            g = torch.Generator().manual_seed(self.seed)
            self.queue = Fn.normalize(torch.randn(self.K, z.shape[1], generator=g), dim=1).to(z.device)
        pos = (z * z).sum(1, keepdim=True) / tau                                 # [B, 1]
        Q = self.queue.detach().clone().to(z.dtype)   # a copy: backward needs Q after the in-place enqueue (MoCo)
        neg = z @ Q.t() / tau                                                    # [B, K], no gradient into Q
        loss = 2 * tau * (torch.logsumexp(torch.cat([pos, neg], 1), dim=1) - pos[:, 0])
        with torch.no_grad():
            keys = ctx.gather(z.detach()).to(self.queue.dtype)                   # [N, D]
            if keys.shape[0] > self.K:
                raise ValueError(f"loss.infonce_queue={self.K} is smaller than the global batch ({keys.shape[0]})")
            rows = (self.ptr + torch.arange(keys.shape[0], device=keys.device)) % self.K
            self.queue[rows.to(self.queue.device)] = keys.to(self.queue.device)
            self.ptr = (self.ptr + keys.shape[0]) % self.K
        return loss

    def _supervised(self, z: Tensor, ctx: LossContext) -> Tensor:
        tau = self.temperature
        zk, yk = ctx.gather(z), ctx.gather(ctx.y)                                # [N, D], [N]
        N = zk.shape[0]
        same = (ctx.y[:, None] == yk[None, :])                                   # [B, N]
        has_neg = (~same).any(1)                                                 # [B]
        gdev = ctx.generator.device if ctx.generator is not None else torch.device("cpu")
        w_pos = same.to(gdev, torch.float64)
        w_neg = torch.where(has_neg[:, None], ~same, torch.ones_like(same)).to(gdev, torch.float64)
        pos_idx = torch.multinomial(w_pos, 1, generator=ctx.generator).to(z.device)            # [B, 1]
        neg_idx = torch.multinomial(w_neg, N, replacement=True, generator=ctx.generator).to(z.device)  # [B, N]
        sim = z @ zk.t() / tau                                                   # [B, N]
        pos = sim.gather(1, pos_idx)
        neg = sim.gather(1, neg_idx) * has_neg[:, None].to(sim.dtype)            # zero keys -> logit 0
        return torch.logsumexp(torch.cat([pos, neg], 1), dim=1) - pos[:, 0]


class CondUncondLoss:
    """CCUA conditional-unconditional alignment (§3.2): ``(t/T) ||eps(x_t,y) - eps(x_t,null)||^2``, no
    stop-gradient; zero on label-dropped batches (both branches are unconditional there)."""

    name, passes, needs_features = "cond_uncond", ("cond", "uncond"), False

    def __call__(self, ctx: LossContext) -> Tensor:
        if ctx.dropped:
            return ctx.x0.new_zeros(ctx.B)
        return ctx.w_t * _sq(ctx.pred("cond").eps, ctx.pred("uncond").eps)


LossTerm = Union[MSELoss, CBDMLoss, AIDLoss, InfoNCELoss, CondUncondLoss]

# The registry: name -> factory(loss_config, feature_space) -> term.
TERMS: dict[str, Callable[..., LossTerm]] = {
    "mse": lambda cfg, space=None: MSELoss(),
    "cbdm": lambda cfg, space=None: CBDMLoss(commit=cfg.cbdm_commit),
    "aid": lambda cfg, space=None: AIDLoss(_need_space(space), gate=cfg.aid_gate, id_from=cfg.aid_id_from,
                                           id_radii=getattr(space, "id_radii", None), normalize=cfg.aid_normalize),
    "infonce": lambda cfg, space=None: InfoNCELoss(temperature=cfg.infonce_temperature, mode=cfg.infonce_mode,
                                                   queue_size=cfg.infonce_queue),
    "cond_uncond": lambda cfg, space=None: CondUncondLoss(),
}


def _need_space(space: FeatureSpace | None) -> FeatureSpace:
    if space is None:
        raise ValueError("loss.aid > 0 needs a classifier feature space (set classifier.checkpoint, or "
                         "loss.aid_features=own)")
    return space


Weight = Union[float, Callable[[int], float]]


class CompositeLoss:
    """``sum_k w_k(step) * mean_b(s_b * term_k[b])`` over active terms; logs each term's batch mean.

    A term with constant weight 0 is inactive: its passes are not run and it is not logged.
    """

    def __init__(self, terms: dict[str, tuple[LossTerm, Weight]]) -> None:
        self.terms = {k: (term, w) for k, (term, w) in terms.items() if callable(w) or w != 0}
        if not self.terms:
            raise ValueError("every loss weight is zero; enable at least one of loss.mse, loss.cbdm, ...")

    @staticmethod
    def from_config(loss_cfg, space: FeatureSpace | None = None) -> "CompositeLoss":
        weights = {name: float(getattr(loss_cfg, name)) for name in TERMS}
        return CompositeLoss({n: (TERMS[n](loss_cfg, space), w) for n, w in weights.items() if w != 0})

    @property
    def passes(self) -> tuple[str, ...]:
        need = {p for term, _ in self.terms.values() for p in term.passes}
        return tuple(p for p in PASSES if p in need)

    @property
    def needs_features(self) -> bool:
        return any(term.needs_features for term, _ in self.terms.values())

    def __call__(self, ctx: LossContext, step: int = 0,
                 sample_weights: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        total = ctx.x0.new_zeros(())
        logs: dict[str, float] = {}
        for name, (term, w) in self.terms.items():
            per = term(ctx)
            if per.shape != (ctx.B,):
                raise ValueError(f"loss term {name!r} returned shape {tuple(per.shape)}, expected ({ctx.B},)")
            wv = float(w(step)) if callable(w) else float(w)
            red = (per * sample_weights).mean() if sample_weights is not None else per.mean()
            total = total + wv * red
            logs[f"loss/{name}"] = per.detach().mean()   # a device tensor: the loop reads it at log_every
        return total, logs
