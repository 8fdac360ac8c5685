"""Property-based tests of the config loader (hypothesis)."""
from __future__ import annotations

import math

import yaml
from hypothesis import given, settings, strategies as st

from ltaug.config import ConfigError, config_to_yaml, from_dict, load_config


@settings(max_examples=60, deadline=None)
@given(r=st.floats(allow_nan=True, allow_infinity=True), size=st.integers(-10, 2000))
def test_ratio_and_size_accepted_iff_in_range(r, size):
    ok = math.isfinite(r) and (r == 0 or r >= 1.0) and 4 <= size <= 1024   # 0 = the source default
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


@settings(max_examples=30, deadline=None)
@given(steps=st.integers(0, 10**6), lr=st.floats(1e-8, 10, allow_nan=False),
       classes=st.lists(st.integers(0, 99), max_size=4), gpu=st.booleans(),
       name=st.text(alphabet="abcxyz-_", min_size=1, max_size=8))
def test_typed_value_equals_its_string_form(steps, lr, classes, gpu, name):
    from ltaug.config import Config, with_values

    typed = {"train.steps": steps, "train.lr": lr, "sample.classes": classes, "resources.use_gpu": gpu,
             "run.name": name}
    text = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in typed.items()]
    assert with_values(Config(), typed) == load_config(None, text)


@settings(max_examples=30, deadline=None)
@given(key=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10),
       section=st.sampled_from(["data", "train", "model", "guidance.minority", "classifier"]))
def test_unknown_key_error_is_the_same_from_set_and_with_values(key, section):
    import pytest

    from ltaug.config import Config, with_values

    dotted = f"{section}.{key}"
    try:
        with_values(Config(), {dotted: 1})
    except ConfigError as e:
        by_values = str(e)
    else:
        return   # a real key
    if "unknown key" not in by_values:
        return   # a real key with a bad value
    with pytest.raises(ConfigError) as by_set:
        load_config(None, [f"{dotted}=1"])
    assert str(by_set.value) == f"--set {dotted}=1: {by_values}"
    assert by_values.startswith(f"unknown key {dotted!r}; allowed keys in {section}: [")


@settings(max_examples=20, deadline=None)
@given(split=st.lists(st.booleans(), min_size=5, max_size=5), ratio=st.floats(1, 500), size=st.integers(4, 64))
def test_layers_merge_per_key(tmp_path_factory, split, ratio, size):
    """Keys spread over two files give the config of one file holding them all (later file wins per key)."""
    d = tmp_path_factory.mktemp("layers")
    items = [("data", "imbalance_ratio", ratio), ("data", "image_size", size), ("train", "steps", 5),
             ("train", "lr", 0.5), ("sample", "classes", [1, 2])]
    first, second, whole = {}, {}, {}
    for (sec, k, v), later in zip(items, split):
        (second if later else first).setdefault(sec, {})[k] = v
        whole.setdefault(sec, {})[k] = v
    first.setdefault("data", {})["image_size"] = 99     # overridden by the later file when it sets the key
    for name, data in (("a", first), ("b", second), ("w", whole)):
        (d / f"{name}.yaml").write_text(yaml.safe_dump(data))
    got = load_config([d / "a.yaml", d / "b.yaml"])
    want = load_config([d / "w.yaml"], [] if split[1] else ["data.image_size=99"])
    assert got == want
