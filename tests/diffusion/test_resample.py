"""CCUA batch re-sampling (BRS) against a direct transcription of CCUA-DDPM ``dataset.py::brs``'s rules."""
from __future__ import annotations

import math

import numpy as np
import torch

from ltaug.diffusion.resample import BatchResampler, ResampledBatches
from ltaug.train import StepBatches


def brs_class_ref(index: int, N: int, C: int, rho: float) -> int:
    """The code's class choice, rule by rule: bins floor(N p_c / sum p), p_c = rho^(c/(C-1)); the *last*
    bin with start <= i <= end wins; an index past every bin goes to class C-1."""
    p = [rho ** (c / (C - 1)) for c in range(C)]
    n = [math.floor(N * p[c] / sum(p)) for c in range(C)]
    the_class = None
    for c in range(C):
        if sum(n[:c]) <= index <= sum(n[:c + 1]):
            the_class = c
        elif index > sum(n[:c + 1]):
            the_class = C - 1
    return the_class


def lt_labels(counts):
    return np.concatenate([np.full(n, c) for c, n in enumerate(counts)])


def test_class_of_every_index_matches_the_code():
    counts = [500, 158, 50, 16, 5]                      # head first, as CCUA's CIFAR-LT construction
    y = lt_labels(counts)
    r = BatchResampler(y, 0.1)
    N = len(y)
    got = r.class_of(torch.arange(N + 1)).tolist()
    assert got == [brs_class_ref(i, N, 5, 0.1) for i in range(N + 1)]


def test_an_epoch_draws_the_softer_profile_and_images_of_the_drawn_class():
    counts = [300, 95, 30, 9, 3]
    y = lt_labels(counts)
    r = BatchResampler(y, 0.1, seed=3)
    N = len(y)
    p = [0.1 ** (c / 4) for c in range(5)]
    bins = [math.floor(N * pc / sum(p)) for pc in p]
    exp = dict(enumerate(bins))
    exp[4] += N - sum(bins)
    assert r.expected_counts() == exp
    out = r(torch.randperm(N, generator=torch.Generator().manual_seed(0)), step=0)   # one shuffled epoch
    drawn = np.bincount(y[out.numpy()], minlength=5)
    assert drawn.tolist() == [exp[c] for c in range(5)]                               # stratified, exactly
    assert drawn[0] / drawn[3] < 15 and counts[0] / counts[3] > 30                    # ~1/rho_b, not 100
    # uniform within the class: the 3 tail images are all reachable
    many = torch.cat([r(torch.full((200,), N - 1), step=s) for s in range(5)])
    assert set(many.tolist()) == set(np.flatnonzero(y == 4).tolist())


def test_classes_are_ranked_by_count_not_by_id():
    y = lt_labels([5, 500, 50])                         # class 1 is the head
    r = BatchResampler(y, 0.1)
    assert r.ranked.tolist() == [1, 2, 0]
    assert r.class_of(torch.tensor([0])).item() == 1 and r.class_of(torch.tensor([len(y) - 1])).item() == 0


def test_resampled_batches_are_split_invariant_and_deterministic():
    y = lt_labels([40, 12, 4])
    r = BatchResampler(y, 0.1, seed=1)
    one = ResampledBatches(StepBatches(len(y), 8, seed=2), r)
    two = [ResampledBatches(StepBatches(len(y), 8, seed=2, rank=k, world_size=2), r) for k in range(2)]
    for step in range(10):
        g = one.indices(step)
        assert torch.equal(g[0::2], two[0].indices(step)) and torch.equal(g[1::2], two[1].indices(step))
        fresh = ResampledBatches(StepBatches(len(y), 8, seed=2), BatchResampler(y, 0.1, seed=1))
        assert torch.equal(g, fresh.indices(step))


def test_training_with_brs_and_infonce_resumes_exactly(tmp_path):
    """BRS batches and the batch-mode InfoNCE are pure functions of the step: 2 + 2 steps equal 4."""
    from dataclasses import dataclass

    from ltaug.config import load_config
    from ltaug.data import ImageSet
    from ltaug.diffusion import train_diffusion
    from ltaug.train import LocalWorld

    @dataclass
    class Toy:
        train: ImageSet

    rng = np.random.default_rng(0)
    y = lt_labels([24, 8, 3])
    data = Toy(ImageSet(rng.integers(0, 255, (len(y), 8, 8, 1), dtype=np.uint8), y, 3, source="toy"))

    def cfg(steps):
        return load_config(None, [f"train.steps={steps}", "train.batch_size=8", "train.warmup=0",
                                  "train.log_every=1", "train.ckpt_every=2", "model.ch=8", "model.ch_mult=[1,2]",
                                  "model.attn_resolutions=[]", "model.groups=4", "model.dropout=0.0",
                                  "tracking.uri=none", "loss.brs=true", "loss.infonce=1.0", "loss.cond_uncond=1.0"])

    a = train_diffusion(cfg(4), data, LocalWorld("cpu"), str(tmp_path / "a"), progress=False)
    train_diffusion(cfg(2), data, LocalWorld("cpu"), str(tmp_path / "b"), progress=False)
    b = train_diffusion(cfg(4), data, LocalWorld("cpu"), str(tmp_path / "b"), progress=False)
    assert b.resumed_from == 2 and {"loss/infonce", "loss/cond_uncond"} <= set(a.history[-1])
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
