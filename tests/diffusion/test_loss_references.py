"""Every loss term against an independent implementation written here from the paper's equation.

Fixed inputs (x0, noise, t, labels, a seeded micro UNet). The references recompute the schedule from the
betas in float64, run each forward pass on its own (no batching, no memoisation), and spell the equations out
with explicit loops where that is clearer. Gradients are checked where a stop-gradient decides them:
CBDM's two terms get analytic cotangents (``d/dh`` and ``d/dh'``) pushed through the network by hand, so a
stop-gradient on the wrong side shows up; InfoNCE's keys and the alignment's two branches carry gradients.
"""
from __future__ import annotations

import math

import pytest
import torch

from diffusion_helpers import micro_unet
from ltaug.diffusion.losses import AIDLoss, CBDMLoss, CondUncondLoss, InfoNCELoss, LossContext, MSELoss

T = 1000


def alpha_bar_ref() -> torch.Tensor:
    """DDPM linear schedule (Ho et al. 2020): beta_1 = 1e-4 .. beta_T = 0.02, alpha_bar_t = prod_{s<=t}(1 - beta_s)."""
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def x_t_ref(x0, t, noise):
    ab = alpha_bar_ref()[t].reshape(-1, 1, 1, 1)
    return (ab.sqrt() * x0.double() + (1 - ab).sqrt() * noise.double()).float()


def pixel_mean(a):
    return a.pow(2).flatten(1).mean(1)


def ctx_for(model, schedule, batch, passes, *, features=False, dropped=False, **kw):
    return LossContext(model, schedule, batch["x0"], batch["y"], batch["t"], batch["noise"], num_classes=3,
                       dropped=dropped, prior_y=batch["prior_y"], passes=passes, features=features, **kw)


def grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def assert_grads_close(a, b, rtol=1e-3):
    """Each parameter's gradient within ``rtol`` of the reference's largest entry (float32 forwards of a
    float64-built x_t differ in the last bits; a misplaced stop-gradient changes them by tens of percent)."""
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=rtol, atol=rtol * float(y.abs().max()) + 1e-8)


NULL = 3  # the null label of the 3-class micro UNet


# -------------------------------------------------------------------------------------------- DDPM MSE
@pytest.mark.parametrize("dropped", [False, True])
def test_mse_equals_ddpm_epsilon_loss(schedule, batch, dropped):
    """L_simple = ||eps - eps_theta(sqrt(ab) x0 + sqrt(1-ab) eps, t, y)||^2 (mean over pixels); y = null if dropped."""
    model = micro_unet()
    x_t = x_t_ref(batch["x0"], batch["t"], batch["noise"])
    y = torch.full_like(batch["y"], NULL) if dropped else batch["y"]
    ref = pixel_mean(model(x_t, batch["t"], y) - batch["noise"])
    got = MSELoss()(ctx_for(model, schedule, batch, ("cond",), dropped=dropped))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------------------- CBDM
def test_cbdm_value_and_which_side_gets_each_gradient(schedule, batch):
    """CBDM (Qin et al. 2023, Eq. for L_r + gamma L_c; code diffusion.py::GaussianDiffusionTrainer):
    ``(t/T) [ ||h - sg(h')||^2 + gamma ||sg(h) - h'||^2 ]``, h = eps(x_t, y), h' = eps(x_t, y'), gamma = 1/4.

    Value from the equation; gradient: d/dh = (t/T) 2 (h - h') / n (the regulariser only), d/dh' = (t/T) gamma
    2 (h' - h) / n (the commitment only), pushed through the network by hand (torch.autograd.grad with these
    cotangents) and compared with backprop through the term."""
    gamma = 0.25
    model = micro_unet()
    x_t = x_t_ref(batch["x0"], batch["t"], batch["noise"])
    w = batch["t"].double() / T
    h = model(x_t, batch["t"], batch["y"])
    hp = model(x_t, batch["t"], batch["prior_y"])
    ref = (w * (pixel_mean(h - hp).double() + gamma * pixel_mean(h - hp).double())).float()
    n = h[0].numel()
    wb = w.float().reshape(-1, 1, 1, 1)
    params = list(model.parameters())
    g_h = torch.autograd.grad(h, params, grad_outputs=(wb * 2 * (h - hp) / n).detach(), retain_graph=True,
                              allow_unused=True)
    g_hp = torch.autograd.grad(hp, params, grad_outputs=(wb * gamma * 2 * (hp - h) / n).detach(), allow_unused=True)
    expected = [(a if a is not None else torch.zeros_like(p)) + (b if b is not None else torch.zeros_like(p))
                for a, b, p in zip(g_h, g_hp, params)]

    got = CBDMLoss(commit=gamma)(ctx_for(model, schedule, batch, ("cond", "prior")))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
    assert_grads_close(grads(model, got.sum()), expected)
    # the check tells the stop-gradients apart: none at all, or swapped sides, give other gradients
    h2, hp2 = model(x_t, batch["t"], batch["y"]), model(x_t, batch["t"], batch["prior_y"])
    none = grads(model, (w.float() * (1 + gamma) * pixel_mean(h2 - hp2)).sum())
    h3, hp3 = model(x_t, batch["t"], batch["y"]), model(x_t, batch["t"], batch["prior_y"])
    swapped = grads(model, (w.float() * (pixel_mean(h3.detach() - hp3) + gamma * pixel_mean(h3 - hp3.detach()))).sum())
    for other in (none, swapped):
        assert any(not torch.allclose(x, y, rtol=1e-3, atol=1e-8) for x, y in zip(expected, other))


def test_cbdm_is_zero_on_label_dropped_batches(schedule, batch):
    model = micro_unet()
    got = CBDMLoss()(ctx_for(model, schedule, batch, ("cond", "prior"), dropped=True))
    assert torch.equal(got, torch.zeros(6))


# -------------------------------------------------------------------------------------------- InfoNCE (UCL)
def info_nce_ref(f_q, f_k, tau):
    """info-nce-pytorch's paired InfoNCE as CCUA's clr.py::uncond_info_nce calls it, written out with loops:
    query i, positive key k_i, negatives {k_j}_{j != i}, cosine similarity / tau, cross-entropy on the positive."""
    q = [v / v.norm() for v in f_q.flatten(1).double()]
    k = [v / v.norm() for v in f_k.flatten(1).double()]
    out = []
    for i in range(len(q)):
        pos = torch.exp(q[i] @ k[i] / tau)
        neg = sum(torch.exp(q[i] @ k[j] / tau) for j in range(len(k)) if j != i)
        out.append(-torch.log(pos / (pos + neg)))
    return torch.stack(out)


@pytest.mark.parametrize("dropped", [False, True])
def test_infonce_batch_equals_ccua_ucl(schedule, batch, dropped):
    """L_UCL,i = (t_i/T) InfoNCE(q = h_unc,i, k+ = h_unc,i, k- = {h_unc,j}_{j != i}), tau = 0.1, on the
    unconditional pass's bottleneck (applied on label-dropped batches too); gradients through query and keys."""
    tau = 0.1
    model = micro_unet()
    x_t = x_t_ref(batch["x0"], batch["t"], batch["noise"])
    _, h_unc = model(x_t, batch["t"], None, return_features=True)
    ref = (batch["t"].double() / T) * info_nce_ref(h_unc, h_unc, tau)
    g_ref = grads(model, ref.sum())
    got = InfoNCELoss(tau)(ctx_for(model, schedule, batch, ("uncond",), features=True, dropped=dropped))
    torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    assert_grads_close(grads(model, got.sum()), g_ref)
    # detaching the keys (a common slip) changes the gradient
    _, h2 = model(x_t, batch["t"], None, return_features=True)
    g_detached = grads(model, ((batch["t"].double() / T) * info_nce_ref(h2, h2.detach(), tau)).sum())
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(g_ref, g_detached))


class _FixedFeatures(torch.nn.Module):
    """A stand-in network: eps = 0, bottleneck = a fixed parameter [B, D] (whatever the input)."""

    def __init__(self, feats):
        super().__init__()
        self.f = torch.nn.Parameter(feats.clone())

    def forward(self, x, t, y=None, return_features=False):
        eps = torch.zeros_like(x) + 0 * self.f.sum()
        f = self.f.repeat(x.shape[0] // self.f.shape[0], 1)
        return (eps, f) if return_features else eps


def test_infonce_queue_equals_the_moco_style_queue_loss(schedule, batch):
    """CCUA clr.py::CLRQueueLoss: ``2 tau CE([q.k, q.Q]/tau, 0)`` with k = q (fq = fk = h_unc), the queue Q of
    past keys detached, FIFO of size K; a random unit-vector start. Two steps: the second sees the first's keys."""
    tau, K = 0.1, 8
    g = torch.Generator().manual_seed(5)
    fa, fb = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    term = InfoNCELoss(tau, mode="queue", queue_size=K, seed=11)
    w = batch["t"].double() / T

    def step(feats):
        net = _FixedFeatures(feats)
        ctx = ctx_for(net, schedule, batch, ("uncond",), features=True)
        return net, term(ctx)

    Q0 = torch.randn(K, 5, generator=torch.Generator().manual_seed(11)).double()
    Q0 = Q0 / Q0.norm(dim=1, keepdim=True)

    def ref(feats, Q):
        z = feats.double() / feats.double().norm(dim=1, keepdim=True)
        out = []
        for i in range(len(z)):
            logits = torch.cat([(z[i] @ z[i]).reshape(1), Q @ z[i]]) / tau
            out.append(2 * tau * -torch.log_softmax(logits, 0)[0])
        return w * torch.stack(out)

    net_a, la = step(fa)
    torch.testing.assert_close(la.double(), ref(fa, Q0), rtol=1e-5, atol=1e-6)
    za = fa / fa.norm(dim=1, keepdim=True)
    Q1 = Q0.clone()
    Q1[:6] = za.double()                                     # rows 0..5 replaced, pointer at 6
    assert term.ptr == 6 and not term.queue.requires_grad
    torch.testing.assert_close(term.queue.double(), Q1, rtol=1e-6, atol=1e-7)
    la.sum().backward()                                      # frees step A's graph

    net_b, lb = step(fb)
    fb_ref = fb.clone().requires_grad_(True)
    rb = ref(fb_ref, Q1)                                     # Q1 is a constant: the queue carries no gradient
    torch.testing.assert_close(lb.double(), rb.detach(), rtol=1e-5, atol=1e-6)
    lb.sum().backward()                                      # would fail if the queue held step A's graph
    rb.sum().backward()
    torch.testing.assert_close(net_b.f.grad.double(), fb_ref.grad.double(), rtol=1e-4, atol=1e-7)
    zb = fb / fb.norm(dim=1, keepdim=True)
    Q2 = Q1.clone()
    Q2[[6, 7, 0, 1, 2, 3]] = zb.double()                     # FIFO wraps around
    torch.testing.assert_close(term.queue.double(), Q2, rtol=1e-6, atol=1e-7)


def test_infonce_supervised_every_draw_and_the_expectation(schedule):
    """CCUA clr.py::cond_info_nce: positive = a uniform same-label sample (itself included), N negatives drawn
    with replacement among other-label samples (zero keys, logit 0, if there are none). Each call equals the
    loss of one admissible draw (enumerated), and the mean over calls matches the exact expectation."""
    import itertools

    tau = 0.5
    y = torch.tensor([0, 0, 1, 2])
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(4, 5, generator=g)
    b = dict(x0=torch.zeros(4, 1, 8, 8), y=y, t=torch.full((4,), T - 1), noise=torch.zeros(4, 1, 8, 8),
             prior_y=y)
    z = (feats / feats.norm(dim=1, keepdim=True)).double()
    s = z @ z.t() / tau
    N = len(y)
    admissible = []
    for i in range(N):
        pos_set = [j for j in range(N) if y[j] == y[i]]
        neg_set = [j for j in range(N) if y[j] != y[i]]
        vals = [torch.logsumexp(torch.stack([s[i, p]] + [s[i, n] for n in negs]), 0) - s[i, p]
                for p in pos_set for negs in itertools.product(neg_set, repeat=N)]
        admissible.append(torch.stack(vals))
    expect = torch.stack([v.mean() for v in admissible])
    std = torch.stack([v.std() for v in admissible])
    w = (T - 1) / T

    term = InfoNCELoss(tau, mode="supervised")
    assert term.passes == ("cond",)
    gen = torch.Generator().manual_seed(0)
    net = _FixedFeatures(feats)
    runs = []
    for _ in range(400):
        ctx = LossContext(net, schedule, b["x0"], y, b["t"], b["noise"], num_classes=3, passes=("cond",),
                          features=True, generator=gen)
        with torch.no_grad():
            per = term(ctx).double() / w
        for i in range(N):
            assert (admissible[i] - per[i]).abs().min() < 1e-5, (i, float(per[i]))
        runs.append(per)
    mean = torch.stack(runs).mean(0)
    assert ((mean - expect).abs() <= 5 * std / math.sqrt(len(runs)) + 1e-9).all(), (mean, expect)
    # a lone sample with no other label: positive = itself, N = 1 zero key: log(e^{1/tau} + 1) - 1/tau
    one = LossContext(_FixedFeatures(feats[:1]), schedule, b["x0"][:1], y[:1], b["t"][:1], b["noise"][:1],
                      num_classes=3, passes=("cond",), features=True, generator=gen)
    torch.testing.assert_close(term(one).double() / w, torch.tensor([math.log(math.exp(1 / tau) + 1) - 1 / tau],
                                                                     dtype=torch.float64), rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------------------- alignment
@pytest.mark.parametrize("dropped", [False, True])
def test_cond_uncond_equals_ccua_alignment(schedule, batch, dropped):
    """L_AL = (t/T) ||eps(x_t, t, y) - eps(x_t, t, null)||^2 (mean over pixels), gradients through both
    branches, skipped (0) when the batch's labels were dropped (CCUA diffusion.py: ``y_l is not None``)."""
    model = micro_unet()
    x_t = x_t_ref(batch["x0"], batch["t"], batch["noise"])
    got = CondUncondLoss()(ctx_for(model, schedule, batch, ("cond", "uncond"), dropped=dropped))
    if dropped:
        assert torch.equal(got, torch.zeros(6))
        return
    ref = (batch["t"].double() / T).float() * pixel_mean(model(x_t, batch["t"], batch["y"])
                                                         - model(x_t, batch["t"], None))
    g_ref = grads(model, ref.sum())
    torch.testing.assert_close(got, ref.detach(), rtol=1e-5, atol=1e-7)
    assert_grads_close(grads(model, got.sum()), g_ref)


# -------------------------------------------------------------------------------------------- AID
@pytest.mark.parametrize("gate", ["none", "half", "alpha_bar"])
@pytest.mark.parametrize("id_from", [0.5, 0.0])
def test_aid_equals_the_documented_reconstruction(schedule, batch, feature_space, gate, id_from):
    """losses.py::AIDLoss (DiffuLT §2.3 as reconstructed in algorithms.md: the paper "penalises ID and OOD"
    generations of the frozen classifier's feature space; no equation in our sources):
    x0_hat = (x_t - sqrt(1-ab) eps)/sqrt(ab) clipped to [-1,1], d = ||phi(x0_hat) - mu_y||,
    L = 1[t >= t_id] relu(r_id - d) + g(t) relu(d - 2 d_f), t_id = id_from * T, r_id = d_f here,
    g = 1[t < T/2] (half) / alpha_bar_t / 1 (none). The classifier is frozen: theta gets the gradient
    through x0_hat. The radii are set so that both sides are live on the batch."""
    space = type(feature_space)(feature_space.extractor, feature_space.centers, torch.tensor([0.6, 0.26, 0.2]))
    model = micro_unet()
    x_t = x_t_ref(batch["x0"], batch["t"], batch["noise"])
    ab = alpha_bar_ref()[batch["t"]]
    eps = model(x_t, batch["t"], batch["y"])
    x0_hat = ((x_t.double() - (1 - ab).sqrt().reshape(-1, 1, 1, 1) * eps.double())
              / ab.sqrt().reshape(-1, 1, 1, 1)).clamp(-1, 1).float()
    d = (space.extractor(x0_hat) - space.centers[batch["y"]]).norm(dim=1)
    r = space.radii[batch["y"]]
    id_side = torch.stack([torch.clamp(r[i] - d[i], min=0) if int(batch["t"][i]) >= id_from * T else d[i] * 0
                           for i in range(len(d))])
    g = {"none": torch.ones(6, dtype=torch.float64),
         "half": torch.tensor([1.0 if int(t) < T // 2 else 0.0 for t in batch["t"]], dtype=torch.float64),
         "alpha_bar": ab}[gate]
    ref = id_side + g.float() * torch.clamp(d - 2 * r, min=0)
    assert (id_side > 0).any() and (torch.clamp(d - 2 * r, min=0) > 0).any()  # both sides are exercised
    g_ref = grads(model, ref.sum())
    got = AIDLoss(space, gate=gate, id_from=id_from)(ctx_for(model, schedule, batch, ("cond",)))
    torch.testing.assert_close(got, ref.detach(), rtol=1e-4, atol=1e-6)
    assert_grads_close(grads(model, got.sum()), g_ref)
