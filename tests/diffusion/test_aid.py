"""AID made honest: the radius behaviour of the loss (a correct reconstruction at small t costs nothing), the
quantile ID radius, and the train_diffusion stage's calibration and own feature network (distinct checkpoint)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from diffusion_helpers import TinyFeatureNet
from ltaug.classify import build_bank
from ltaug.diffusion import NoiseSchedule, SimpleFeatureSpace
from ltaug.diffusion.aid import calibrate, calibration_batch, quantile_radii
from ltaug.diffusion.losses import AIDLoss, LossContext


class Oracle(nn.Module):
    """Predicts the true noise of the batch it was given: x0_hat = x0 exactly (a correct reconstruction)."""

    def __init__(self, noise: torch.Tensor) -> None:
        super().__init__()
        self.noise = noise
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, y=None, return_features=False):
        return self.noise + 0 * self.w


@pytest.fixture
def real():
    g = torch.Generator().manual_seed(5)
    x0 = (torch.rand(12, 1, 8, 8, generator=g) * 2 - 1) * 0.9
    y = torch.arange(3).repeat(4)
    noise = torch.randn(12, 1, 8, 8, generator=g)
    net = TinyFeatureNet()
    bank = build_bank(net.features(x0), y, 3, radius="max")   # every real image is ID (d <= d_f)
    return x0, y, noise, SimpleFeatureSpace(net.features, bank.centers, bank.radii)


def _ctx(space_noise, x0, y, t, schedule):
    return LossContext(Oracle(space_noise), schedule, x0, y, t, space_noise, num_classes=3)


def test_a_real_image_at_small_t_is_not_penalised(real):
    x0, y, noise, space = real
    schedule = NoiseSchedule.linear(1000)
    small = torch.full((12,), 5)
    ctx = _ctx(noise, x0, y, small, schedule)
    for gate in ("half", "alpha_bar", "none"):
        assert torch.equal(AIDLoss(space, gate=gate)(ctx), torch.zeros(12))
    # the old reconstruction (ID side at every t) pushed these correct reconstructions out of the ball
    old = AIDLoss(space, gate="none", id_from=0.0)(_ctx(noise, x0, y, small, schedule))
    assert (old > 0).sum() >= 9
    # where the model generates (t >= T/2) the ID side acts: x0_hat inside the ball is penalised
    big = AIDLoss(space)(_ctx(noise, x0, y, torch.full((12,), 700), schedule))
    assert (big > 0).sum() >= 9


def test_quantile_id_radius_and_calibration_fields(real):
    x0, y, noise, space = real
    q = quantile_radii(space, x0, y, 3, 0.5)
    assert q.shape == (3,) and (q < space.radii).all() and (q > 0).all()
    space_q = SimpleFeatureSpace(space.extractor, space.centers, space.radii, id_radii=q)
    schedule = NoiseSchedule.linear(1000)
    t = torch.full((12,), 700)
    full = AIDLoss(space)(_ctx(noise, x0, y, t, schedule))
    half = AIDLoss(space_q, id_radii=q)(_ctx(noise, x0, y, t, schedule))
    assert (half <= full + 1e-7).all() and half.sum() < full.sum()
    from diffusion_helpers import micro_unet
    batch = calibration_batch(x0, y, 1000, seed=0, n=8)
    c = calibrate(micro_unet(), schedule, AIDLoss(space, gate="none", id_from=0.0), batch, 3, alpha=0.1)
    for k in ("mse", "aid", "ratio_mean", "grad_mse", "grad_aid", "ratio_grad", "alpha_ratio_grad"):
        assert isinstance(c[k], float) and math.isfinite(c[k]) and c[k] >= 0, k
    assert c["grad_aid"] > 0 and abs(c["x0_hat_id"] + c["x0_hat_aid"] + c["x0_hat_ood"] - 1) < 1e-6


TINY = ["data.image_size=8", "model.ch=8", "model.ch_mult=[1,2]", "model.attn_resolutions=[]", "model.groups=4",
        "train.steps=3", "train.batch_size=16", "train.ckpt_every=0", "train.warmup=0", "diffusion.timesteps=50",
        "sample.steps=2", "classifier.steps=6", "classifier.batch_size=32", "classifier.arch=resnet20",
        "classifier.width=4", "loss.aid=0.1", "loss.aid_arch=resnet20"]


def test_stage_reports_calibration_and_own_features_are_not_the_filters(tmp_path):
    from ltaug.config import ResourcesConfig, load_config, with_values
    from ltaug.stages import LocalLauncher
    from ltaug.stages.run import open_run
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "generate"))
    from fakes import tiny_classifier_checkpoint
    from ltaug.stages.train_diffusion import train_diffusion
    from ltaug.train.checkpoint import CheckpointError

    cfg = load_config(None, [*TINY, f"run.output_dir={tmp_path}"])
    launcher = LocalLauncher(ResourcesConfig())
    filt = tiny_classifier_checkpoint(str(tmp_path / "filter.pt"), num_classes=10, image_size=8)
    own = with_values(cfg, {"classifier.checkpoint": filt, "loss.aid_features": "own", "sample.num_per_class": 1})
    s = train_diffusion(own, open_run(own, "train_diffusion", tracked=False), launcher)
    a = s["aid_features"]
    assert a["source"] == "own" and a["trained"] and a["digest"] != a["filter_digest"] and a["checkpoint"] != filt
    for when in ("init", "final"):
        c = s["aid_calibration"][when]
        assert all(math.isfinite(c[k]) for k in ("mse", "aid", "ratio_mean", "grad_mse", "grad_aid", "ratio_grad"))
    assert s["aid_calibration"]["init"]["mse"] != s["aid_calibration"]["final"]["mse"]
    # a given own checkpoint that is the filter's, or that is missing: errors name the key
    same = with_values(own, {"loss.aid_checkpoint": filt})
    with pytest.raises(ValueError, match="loss.aid_checkpoint"):
        train_diffusion(same, open_run(same, "train_diffusion", tracked=False), launcher)
    gone = with_values(own, {"loss.aid_checkpoint": str(tmp_path / "nope.pt")})
    with pytest.raises(CheckpointError, match="loss.aid_checkpoint"):
        train_diffusion(gone, open_run(gone, "train_diffusion", tracked=False), launcher)


def test_normalize_makes_alpha_a_share_of_the_mse(real):
    """loss.aid_normalize: on the first step the scaled term's batch mean equals the eps-MSE's (EMAs = batch means)."""
    from diffusion_helpers import micro_unet
    from ltaug.diffusion.losses import MSELoss

    x0, y, noise, space = real
    schedule = NoiseSchedule.linear(1000)
    ctx = LossContext(micro_unet(), schedule, x0, y, torch.full((12,), 700), noise, num_classes=3)
    term = AIDLoss(space, normalize=True)
    got = term(ctx)
    torch.testing.assert_close(got.mean(), MSELoss()(ctx).mean().detach(), rtol=1e-5, atol=1e-7)
    assert got.requires_grad and term.m_aid > 0
