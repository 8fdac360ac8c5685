"""Property-based tests of the config loader (hypothesis)."""
from __future__ import annotations

import math

import yaml
from hypothesis import given, settings, strategies as st

from ltaug.config import ConfigError, config_to_yaml, from_dict, load_config


@settings(max_examples=60, deadline=None)
@given(r=st.floats(allow_nan=True, allow_infinity=True), size=st.integers(-10, 2000))
def test_ratio_and_size_accepted_iff_in_range(r, size):
    ok = math.isfinite(r) and r >= 1.0 and 4 <= size <= 1024
    try:
        cfg = load_config(None, [f"data.imbalance_ratio={r!r}".replace("inf", ".inf").replace("nan", ".nan"),
                                 f"data.image_size={size}"])
    except ConfigError as e:
        assert not ok
        assert "data.imbalance_ratio" in str(e) or "data.image_size" in str(e)
    else:
        assert ok and cfg.data.imbalance_ratio == r and cfg.data.image_size == size


@settings(max_examples=40, deadline=None)
@given(key=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12),
       section=st.sampled_from(["data", "train", "sample", "classifier", "generate"]))
def test_unknown_keys_always_rejected_by_name(key, section):
    from ltaug.config import Config
    import dataclasses

    sec_cls = {f.name: f for f in dataclasses.fields(Config)}[section].default_factory
    if key in {f.name for f in dataclasses.fields(sec_cls)}:
        return
    try:
        load_config(None, [f"{section}.{key}=1"])
    except ConfigError as e:
        assert f"{section}.{key}" in str(e)
    else:
        raise AssertionError("unknown key accepted")


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(-2**31, 2**31), steps=st.integers(0, 10**6), omega=st.floats(0, 10, allow_nan=False),
       sampler=st.sampled_from(["ddpm", "ddim"]))
def test_yaml_round_trip(seed, steps, omega, sampler):
    cfg = load_config(None, [f"seed={seed}", f"train.steps={steps}", f"guidance.cfg.omega={omega!r}",
                             f"sample.sampler={sampler}"])
    assert from_dict(yaml.safe_load(config_to_yaml(cfg))) == cfg
