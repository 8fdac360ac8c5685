"""The one training loop: resume equals uninterrupted (bit-identical), StepBatches, checkpoints."""
import torch
from torch import nn

from ltaug.train import LocalWorld, LoopSpec, StepBatches, fit, lr_factor
from ltaug.train import checkpoint as ckpt_io

torch.set_num_threads(1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))

    def forward(self, x):
        return self.body(x)


X = torch.randn(40, 4, generator=torch.Generator().manual_seed(1))
Y = X.sum(1, keepdim=True)


def objective(batches):
    def obj(model, step, g):
        idx = batches.indices(step)
        noise = torch.randn(len(idx), 1, generator=g) * 0.01
        loss = (model(X[idx]) - Y[idx] - noise).pow(2).mean()
        return loss, {"mse": float(loss.detach())}
    return obj


TOY = dict(lr=0.01, optimizer="adam", momentum=0.0, weight_decay=0.0, warmup=2, milestones=(), gamma=0.1,
           grad_clip=1.0, ema_decay=0.9, amp=False, grad_accum=1, log_every=1, ckpt_every=0, keep_checkpoints=2, seed=3, desc="toy")


def spec(steps, **kw):
    return LoopSpec(steps=steps, **{**TOY, **kw})


def test_resume_equals_uninterrupted(tmp_path):
    torch.manual_seed(123)
    a = fit(Net(), objective(StepBatches(40, 8, seed=5)), spec(7, ckpt_every=3), LocalWorld("cpu"),
            ckpt_dir=str(tmp_path / "a"), progress=False)
    torch.manual_seed(123)
    fit(Net(), objective(StepBatches(40, 8, seed=5)), spec(4), LocalWorld("cpu"), ckpt_dir=str(tmp_path / "b"),
        progress=False)
    torch.manual_seed(999)  # global RNG state differs after the "restart"; the checkpoint restores it
    b = fit(Net(), objective(StepBatches(40, 8, seed=5)), spec(7), LocalWorld("cpu"), ckpt_dir=str(tmp_path / "b"),
            progress=False)
    assert b.resumed_from == 4 and b.step == 7
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    for va, vb in zip(a.ema.state_dict().values(), b.ema.state_dict().values()):
        assert torch.equal(va, vb)
    assert [h["loss"] for h in a.history[4:]] == [h["loss"] for h in b.history]


def test_every_hooks_and_checkpoint_contents(tmp_path):
    calls = []
    res = fit(Net(), objective(StepBatches(40, 8)), spec(4, ckpt_every=2), LocalWorld("cpu"),
              ckpt_dir=str(tmp_path), config={"a": 1}, kind="toy", extra={"n": 2},
              every=[(3, lambda st: calls.append(st.step))], progress=False)
    assert calls == [3, 4]
    ck = ckpt_io.load(res.checkpoint)
    assert set(ck) >= {"format", "kind", "config", "model", "ema", "optimizer", "step", "rng", "extra"}
    assert ck["kind"] == "toy" and ck["step"] == 4 and ck["config"] == {"a": 1}
    assert [s for s, _ in ckpt_io.list_checkpoints(str(tmp_path))] == [2, 4]


def test_latest_valid_skips_corrupt(tmp_path):
    fit(Net(), objective(StepBatches(40, 8)), spec(4, ckpt_every=2), LocalWorld("cpu"), ckpt_dir=str(tmp_path),
        progress=False)
    newest = ckpt_io.path_for(str(tmp_path), 4)
    with open(newest, "r+b") as fh:
        fh.truncate(100)
    import pytest
    with pytest.warns(UserWarning, match="skipping"):
        ck = ckpt_io.latest_valid(str(tmp_path))
    assert ck["step"] == 2


def test_step_batches_are_a_function_of_step():
    b = StepBatches(10, 4, seed=1)
    seq = [b.global_indices(s).tolist() for s in range(6)]
    fresh = StepBatches(10, 4, seed=1)
    assert [fresh.global_indices(s).tolist() for s in reversed(range(6))] == list(reversed(seq))
    flat = sum(seq[:5], [])[:10]
    assert sorted(flat) == list(range(10))  # first epoch is a permutation
    r0, r1 = StepBatches(10, 4, seed=1, rank=0, world_size=2), StepBatches(10, 4, seed=1, rank=1, world_size=2)
    assert sorted(r0.indices(3).tolist() + r1.indices(3).tolist()) == sorted(seq[3])


def test_lr_factor():
    s = spec(10, lr=1.0, warmup=4, milestones=(6,), gamma=0.1)
    assert [round(lr_factor(s, i), 3) for i in range(8)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 0.1, 0.1]


# ------------------------------------------------------------------ LoopSpec: no defaults, one builder each


def test_loop_spec_has_no_defaults():
    import dataclasses

    for f in dataclasses.fields(LoopSpec):
        assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, f.name


def test_diffusion_loop_spec_comes_from_train_and_seed():
    from ltaug.config import Config, with_values
    from ltaug.diffusion.train import loop_spec

    cfg = with_values(Config(), {"seed": 9, "train": dict(steps=200, lr=0.5, optimizer="sgd", momentum=0.7,
                                                            weight_decay=0.01, warmup=3, milestones=[0.5, 0.75],
                                                            lr_gamma=0.2, grad_clip=2.0, ema_decay=0.5, amp=False, grad_accum=2,
                                                            log_every=7, ckpt_every=11, keep_checkpoints=4)})
    assert loop_spec(cfg) == LoopSpec(steps=200, lr=0.5, optimizer="sgd", momentum=0.7, weight_decay=0.01, warmup=3,
                                      milestones=(100, 150), gamma=0.2, grad_clip=2.0, ema_decay=0.5, amp=False, grad_accum=2,
                                      log_every=7, ckpt_every=11, keep_checkpoints=4, seed=9, desc="diffusion")
    t, s = Config().train, loop_spec(Config())   # the defaults are the config's, field by field
    assert (s.steps, s.lr, s.optimizer, s.momentum, s.warmup, s.grad_clip, s.ema_decay, s.amp, s.keep_checkpoints) == (
        t.steps, t.lr, t.optimizer, t.momentum, t.warmup, t.grad_clip, t.ema_decay, t.amp, t.keep_checkpoints)


def test_classifier_loop_spec_comes_from_classifier():
    from ltaug.classify.trainer import loop_spec
    from ltaug.config import Config, with_values

    c = with_values(Config(), {"classifier": dict(steps=100, lr=0.3, optimizer="adamw", momentum=0.8,
                                                   weight_decay=0.002, warmup=0.1, milestones=[0.5], lr_gamma=0.5,
                                                   grad_clip=3.0, ema_decay=0.9, amp=True, log_every=5,
                                                   ckpt_every=20, keep_checkpoints=3)}).classifier
    assert loop_spec(c, n_train=1000, seed=4) == LoopSpec(
        steps=100, lr=0.3, optimizer="adamw", momentum=0.8, weight_decay=0.002, warmup=10, milestones=(50,),
        gamma=0.5, grad_clip=3.0, ema_decay=0.9, amp=True, grad_accum=1, log_every=5, ckpt_every=20, keep_checkpoints=3, seed=4,
        desc="classifier[resnet32/ce]")
