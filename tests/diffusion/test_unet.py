import torch

from ltaug.diffusion import PRESETS, UNet, UNetSpec
from ltaug.diffusion.unet import num_params

from diffusion_helpers import micro_unet


def test_shapes_null_label_and_features():
    m = micro_unet()
    x = torch.randn(5, 1, 8, 8)
    t = torch.tensor([0, 1, 500, 998, 999])
    y = torch.tensor([0, 1, 2, 3, 0])  # 3 = null label
    eps, h = m(x, t, y, return_features=True)
    assert eps.shape == x.shape and h.shape == (5, 16, 4, 4)
    torch.testing.assert_close(m(x, t, None), m(x, t, torch.full((5,), 3)))
    assert not torch.allclose(m(x, t, torch.zeros(5, dtype=torch.long)), m(x, t, None))


def test_presets_sizes():
    tiny = num_params(UNet(UNetSpec(in_channels=1, image_size=16, num_classes=10, **PRESETS["tiny"])))
    assert 5e5 < tiny < 1e6  # CPU quickstart model: ~0.5-1M parameters
    cbdm = UNet(UNetSpec(in_channels=3, image_size=32, num_classes=100, **PRESETS["cbdm"]))
    assert 35e6 < num_params(cbdm) < 37e6  # CBDM CIFAR config: 128, [1,2,2,2], attn 16, 2 blocks
    assert cbdm(torch.randn(1, 3, 32, 32), torch.tensor([5])).shape == (1, 3, 32, 32)


def test_gradients_reach_every_parameter():
    m = micro_unet(dropout=0.1)
    x = torch.randn(4, 1, 8, 8)
    m(x, torch.tensor([1, 2, 3, 4]), torch.tensor([0, 1, 2, 3])).pow(2).mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


# ------------------------------------------------------------------ presets and the spec from config

import dataclasses  # noqa: E402

import pytest  # noqa: E402

from ltaug.config import ConfigError, load_config, with_values  # noqa: E402
from ltaug.diffusion import spec_from_config  # noqa: E402
from ltaug.train import CheckpointError  # noqa: E402


def _spec(*sets: str) -> UNetSpec:
    return spec_from_config(load_config(None, list(sets)).model, 1, 16, 10)


def test_unet_spec_has_no_defaults_and_presets_cover_every_field():
    for f in dataclasses.fields(UNetSpec):
        assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, f.name
    data_fields = {"in_channels", "image_size", "num_classes"}
    for name, arch in PRESETS.items():
        assert set(arch) == {f.name for f in dataclasses.fields(UNetSpec)} - data_fields, name


def test_preset_supplies_defaults_and_explicit_keys_win():
    assert _spec("model.preset=tiny") == UNetSpec(in_channels=1, image_size=16, num_classes=10, **PRESETS["tiny"])
    assert _spec() == UNetSpec(in_channels=1, image_size=16, num_classes=10, **PRESETS["custom"])
    # an explicit key wins over the preset, whichever order they are given in
    for sets in (["model.preset=tiny", "model.ch=64"], ["model.ch=64", "model.preset=tiny"]):
        s = _spec(*sets)
        assert s.ch == 64 and dataclasses.replace(s, ch=PRESETS["tiny"]["ch"]) == _spec("model.preset=tiny")
    cbdm = _spec("model.preset=cbdm", "model.dropout=0.0", "model.attn_resolutions=[]")
    assert (cbdm.dropout, cbdm.attn_resolutions, cbdm.ch, cbdm.ch_mult) == (0.0, (), 128, (1, 2, 2, 2))
    # and across layers: a preset from a later layer leaves an earlier explicit key standing
    cfg = with_values(load_config(None, ["model.groups=4"]), {"model.preset": "small"})
    assert spec_from_config(cfg.model, 1, 16, 10).groups == 4 and cfg.model.architecture()["ch"] == 64


def test_resolved_architecture_is_validated_by_name():
    with pytest.raises(ConfigError, match=r"model.num_heads: 3 must divide model.ch=32 \(with model.preset=tiny\)"):
        load_config(None, ["model.preset=tiny", "model.num_heads=3"])
    with pytest.raises(ConfigError, match=r"model.ch_mult"):
        load_config(None, ["model.ch_mult=[]"])


def test_spec_record_round_trip_and_old_checkpoints_load(tmp_path):
    from ltaug.diffusion.train import load_diffusion
    from ltaug.train import checkpoint as ckpt_io

    spec = _spec("model.preset=tiny")
    assert UNetSpec.from_record(spec.to_record()) == spec
    with pytest.raises(CheckpointError, match=r"old.pt: .*missing \['groups'\]"):
        UNetSpec.from_record({k: v for k, v in spec.to_record().items() if k != "groups"}, "old.pt")
    # the record as every checkpoint so far wrote it (the dataclass __dict__, tuples as lists)
    old = UNetSpec(in_channels=1, image_size=8, num_classes=3, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                   attn_resolutions=(), dropout=0.0, num_heads=1, groups=4)
    record = {k: (list(v) if isinstance(v, tuple) else v) for k, v in old.__dict__.items()}
    uri = str(tmp_path / "ckpt-000000001.pt")
    ckpt_io.save(uri, {"kind": "diffusion", "config": {"diffusion": {"timesteps": 10}}, "model": UNet(old).state_dict(),
                       "ema": None, "optimizer": {}, "step": 1, "rng": ckpt_io.rng_state(),
                       "extra": {"spec": record}})
    assert load_diffusion(uri).model.spec == old
