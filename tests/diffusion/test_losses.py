"""Contract tests over every loss term in the registry, the context's pass bookkeeping, and the maths."""
import pytest
import torch
import torch.nn.functional as Fn

from diffusion_helpers import micro_unet
from ltaug.config import LossConfig
from ltaug.diffusion import TERMS, CompositeLoss, LossContext
from ltaug.diffusion.losses import AIDLoss, CBDMLoss, CondUncondLoss, InfoNCELoss, MSELoss


def ctx_for(model, schedule, batch, passes, features=False, dropped=False):
    return LossContext(model, schedule, batch["x0"], batch["y"], batch["t"], batch["noise"], num_classes=3,
                       dropped=dropped, prior_y=batch["prior_y"], passes=passes, features=features)


def make_term(name, feature_space):
    return TERMS[name](LossConfig(aid_gate="none"), feature_space)


@pytest.mark.parametrize("name", sorted(TERMS))
def test_term_contract(name, schedule, batch, feature_space):
    model = micro_unet()
    term = make_term(name, feature_space)
    assert set(term.passes) <= {"cond", "uncond", "prior"} and isinstance(term.needs_features, bool)
    ctx = ctx_for(model, schedule, batch, term.passes, term.needs_features)
    per = term(ctx)
    assert per.shape == (6,) and torch.isfinite(per).all() and (per >= 0).all()
    assert ctx.forwards == 1  # all of the term's passes in one batched forward
    per.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", sorted(n for n in TERMS if n != "mse"))
def test_a_weight_scheduled_to_zero_leaves_loss_and_gradients_unchanged(name, schedule, batch, feature_space):
    """A term whose weight is a step schedule is computed at every step (no constructor filter applies), yet
    at a step where its weight is 0 the total and every gradient equal plain MSE; where it is 1 they differ."""
    sched = lambda step: 0.0 if step < 10 else 1.0  # noqa: E731
    with_term = CompositeLoss({"mse": (MSELoss(), 1.0), name: (make_term(name, feature_space), sched)})
    base = CompositeLoss({"mse": (MSELoss(), 1.0)})
    assert name in with_term.terms                        # kept: its weight is not a constant zero

    def loss_and_grads(loss, step):
        torch.manual_seed(0)
        model = micro_unet()
        total, logs = loss(ctx_for(model, schedule, batch, loss.passes, loss.needs_features), step)
        total.backward()
        return total, logs, [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]

    b, _, gb = loss_and_grads(base, 0)
    a, logs, ga = loss_and_grads(with_term, 0)
    assert f"loss/{name}" in logs                         # the term ran and was logged
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)
    c, _, gc = loss_and_grads(with_term, 10)
    assert not torch.allclose(c, b) or any(not torch.allclose(x, y) for x, y in zip(gc, gb))


def test_constant_zero_weight_runs_no_pass():
    loss = CompositeLoss({"mse": (MSELoss(), 1.0), "cond_uncond": (CondUncondLoss(), 0.0)})
    assert loss.passes == ("cond",) and set(loss.terms) == {"mse"}


def test_context_runs_every_pass_once_and_shares(schedule, batch, feature_space):
    model = micro_unet()
    calls = []
    orig = model.forward
    model.forward = lambda *a, **k: calls.append(a[0].shape[0]) or orig(*a, **k)
    loss = CompositeLoss({n: (make_term(n, feature_space), 1.0) for n in TERMS})
    assert loss.passes == ("cond", "uncond", "prior") and loss.needs_features
    ctx = ctx_for(model, schedule, batch, loss.passes, loss.needs_features)
    total, logs = loss(ctx)
    assert calls == [18]  # cond + uncond + prior batched into one forward of 3B
    assert set(logs) == {f"loss/{n}" for n in TERMS} and torch.isfinite(total)
    # each pass equals a separate forward (passes are independent; no dropout here)
    torch.testing.assert_close(ctx.pred("uncond").eps, orig(ctx.x_t, batch["t"], None), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ctx.pred("prior").eps, orig(ctx.x_t, batch["t"], batch["prior_y"]), atol=1e-5, rtol=1e-4)
    assert len(calls) == 1


def test_dropped_batch(schedule, batch):
    model = micro_unet()
    ctx = ctx_for(model, schedule, batch, ("cond", "uncond"), dropped=True)
    assert torch.equal(ctx.pred("cond").eps, ctx.pred("uncond").eps)
    assert ctx.forwards == 1
    assert (CBDMLoss()(ctx) == 0).all() and (CondUncondLoss()(ctx) == 0).all()
    assert ctx.forwards == 1  # CBDM skipped: no prior pass on dropped batches


def test_cbdm_maths_and_stop_gradient(schedule, batch):
    model = micro_unet()
    ctx = ctx_for(model, schedule, batch, ("cond", "prior"))
    h, hp = ctx.pred("cond").eps, ctx.pred("prior").eps
    w = batch["t"].float() / 1000
    ref = w * ((h - hp) ** 2).flatten(1).mean(1) * 1.25
    torch.testing.assert_close(CBDMLoss(commit=0.25)(ctx), ref)
    # gradient w.r.t. h is 2 w (h - h') / n  (commitment part is stop-gradient on h)
    h.retain_grad()
    hp.retain_grad()
    CBDMLoss(commit=0.25)(ctx).sum().backward()
    n = h[0].numel()
    torch.testing.assert_close(h.grad, (2 * w[:, None, None, None] * (h - hp) / n).detach())
    torch.testing.assert_close(hp.grad, (0.25 * 2 * w[:, None, None, None] * (hp - h) / n).detach())


def test_infonce_maths(schedule, batch):
    model = micro_unet()
    ctx = ctx_for(model, schedule, batch, ("uncond",), features=True)
    z = Fn.normalize(ctx.pred("uncond").features.flatten(1), dim=1)
    logits = z @ z.t() / 0.1
    # each sample its own positive, the others the negatives: cross-entropy with target i
    ce = Fn.cross_entropy(logits, torch.arange(6), reduction="none")
    torch.testing.assert_close(InfoNCELoss(0.1)(ctx), batch["t"].float() / 1000 * ce)


def test_aid_band_and_gate(schedule, batch, feature_space):
    model = micro_unet()
    ctx = ctx_for(model, schedule, batch, ("cond",))
    none = AIDLoss(feature_space, gate="none")(ctx)
    half = AIDLoss(feature_space, gate="half")(ctx)
    assert torch.equal(half, none * (batch["t"] < 500).float())
    x0_hat = schedule.eps_to_x0(ctx.x_t, batch["t"], ctx.pred("cond").eps).clamp(-1, 1)
    d = (feature_space.extractor(x0_hat) - feature_space.centers[batch["y"]]).norm(dim=1)
    r = feature_space.radii[batch["y"]]
    inside = (d > r) & (d <= 2 * r)
    assert (none[inside] == 0).all() and (none[~inside] > 0).all()


def test_aid_needs_feature_space():
    with pytest.raises(ValueError, match="classifier"):
        CompositeLoss.from_config(LossConfig(aid=0.1))


def test_step_weights_and_sample_weights(schedule, batch):
    model = micro_unet()
    loss = CompositeLoss({"mse": (MSELoss(), lambda s: 0.0 if s < 10 else 2.0)})
    ctx = ctx_for(model, schedule, batch, loss.passes)
    assert float(loss(ctx, step=0)[0].detach()) == 0.0
    per = MSELoss()(ctx)
    torch.testing.assert_close(loss(ctx, step=10)[0], 2 * per.mean())
    sw = torch.tensor([1.0, 0, 0, 0, 0, 0])
    torch.testing.assert_close(loss(ctx, 10, sw)[0], 2 * per[0] / 6)


@pytest.mark.parametrize("mode", ["queue", "supervised"])
def test_infonce_modes_contract(mode, schedule, batch):
    model = micro_unet()
    term = InfoNCELoss(0.1, mode=mode, queue_size=12)
    ctx = ctx_for(model, schedule, batch, term.passes, features=True)
    ctx.generator = torch.Generator().manual_seed(0)
    per = term(ctx)
    assert per.shape == (6,) and torch.isfinite(per).all() and (per >= 0).all() and ctx.forwards == 1
    per.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with pytest.raises(ValueError, match="infonce_mode"):
        InfoNCELoss(mode="moco")


def test_queue_smaller_than_the_batch_is_an_error(schedule, batch):
    term = InfoNCELoss(mode="queue", queue_size=4)
    with pytest.raises(ValueError, match="infonce_queue"):
        term(ctx_for(micro_unet(), schedule, batch, term.passes, features=True))


def test_default_loss_is_plain_ddpm_and_every_preset_states_its_terms():
    import yaml
    from pathlib import Path

    from ltaug.config import load_config

    plain = CompositeLoss.from_config(load_config(None, []).loss)
    assert set(plain.terms) == {"mse"} and plain.passes == ("cond",) and not plain.needs_features
    root = Path(__file__).resolve().parents[2] / "configs"
    for p in sorted(root.glob("*.yaml")):
        stated = yaml.safe_load(p.read_text()).get("loss") or {}
        assert "mse" in stated and "cbdm" in stated, p.name            # explicit, never the defaults
    ccua = load_config(root / "ccua.yaml").loss
    assert (ccua.mse, ccua.cbdm, ccua.aid, ccua.infonce, ccua.cond_uncond) == (1.0, 0.0, 0.0, 1.0, 1.0)
    assert (ccua.infonce_temperature, ccua.infonce_mode, ccua.brs) == (0.1, "batch", False)
    assert set(CompositeLoss.from_config(ccua).terms) == {"mse", "infonce", "cond_uncond"}
    quick = load_config(root / "quickstart.yaml").loss
    assert (quick.mse, quick.cbdm) == (1.0, 1.0)                       # the quickstart keeps CBDM


def test_local_world_gathers_itself_and_a_world_without_gather_fails_loudly():
    from types import SimpleNamespace

    from ltaug.diffusion.train import _world_gather
    from ltaug.train import LocalWorld

    v = torch.randn(3, 2)
    assert LocalWorld("cpu").all_gather(v) is v
    assert _world_gather(SimpleNamespace(world_size=1)) is None       # identity inside LossContext
    fn = _world_gather(SimpleNamespace(world_size=2))
    with pytest.raises(TypeError, match="all_gather"):
        fn(v)
