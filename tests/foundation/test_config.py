"""The strict config loader: unknown keys, types, ranges, overrides, secrets, YAML round trip."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ltaug.config import (Config, ConfigError, config_to_yaml, describe, digest, flat_params, from_dict, load_config,
                          with_values)

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_and_overrides():
    cfg = load_config(None, ["data.imbalance_ratio=100", "guidance.minority.scale=0.2", "seed=7"])
    assert cfg.data.imbalance_ratio == 100.0 and cfg.guidance.minority.scale == 0.2 and cfg.seed == 7
    assert cfg.data.source == "digits"


@pytest.mark.parametrize("override, words", [
    (["data.bogus=1"], ["data.bogus", "allowed keys", "imbalance_ratio"]),
    (["bogus=1"], ["bogus"]),
    (["data.imbalance_ratio=0.5"], ["data.imbalance_ratio", ">= 1.0"]),
    (["data.imbalance_ratio=.nan"], ["data.imbalance_ratio", "finite"]),
    (["data.image_size=-3"], ["data.image_size"]),
    (["data.image_size=abc"], ["data.image_size", "integer"]),
    (["data.source=svhn"], ["data.source", "cifar10", "digits"]),
    (["sample.sampler=euler"], ["sample.sampler", "ddim"]),
    (["train.steps=1.5"], ["train.steps", "integer"]),
    (["resources.use_gpu=maybe"], ["resources.use_gpu", "true or false"]),
    (["data=3"], ["data", "mapping"]),
    (["data.source.x=1"], ["data.source.x", "data.source is a value", "not a section"]),
    (["classifier.stepz=3"], ["--set classifier.stepz=3: unknown key 'classifier.stepz'",
                               "allowed keys in classifier: [", "'steps'"]),
    (["guidance.minority.scal=1"], ["'guidance.minority.scal'", "allowed keys in guidance.minority", "'scale'"]),
    (["tune.space={a: [1], a: [2]}"], ["--set tune.space", "duplicate key 'a'"]),
    (["data.source=cifar10"], ["data.root", "required"]),
    (["guidance.cfg.omega=-1"], ["guidance.cfg.omega"]),
])
def test_bad_values_name_the_key(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, override)
    for w in words:
        assert w in str(e.value)


def test_yaml_file_errors_name_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  imbalance_ratio: -2\n")
    with pytest.raises(ConfigError, match=r"c.yaml: data.imbalance_ratio"):
        load_config(p)
    p.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_round_trip_and_frozen():
    cfg = load_config(None, ["data.imbalance_ratio=50", "sample.classes=[1, 2]"])
    again = from_dict(yaml.safe_load(config_to_yaml(cfg)))
    assert again == cfg and digest(again) == digest(cfg)
    with pytest.raises(Exception):
        cfg.seed = 3  # frozen
    assert digest(load_config(None, ["seed=1"])) != digest(cfg)


def test_flat_params_are_flat_and_complete():
    params = flat_params(Config())
    assert "data.source" in params and "guidance.minority.scale" in params
    assert all(not isinstance(v, (dict, list)) for v in params.values())


def test_presets_load(tmp_path):
    for preset in sorted((ROOT / "configs").glob("*.yaml")):
        load_config(preset)


def _run_job(args: list[str], capsys, subprocess_run: bool) -> tuple[int, str, str]:
    """``python <job> ARGS``: as a subprocess, or in this interpreter (``runpy`` as ``__main__``, the same
    script code without a new interpreter importing torch)."""
    if subprocess_run:
        out = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
        return out.returncode, out.stdout, out.stderr
    import runpy

    capsys.readouterr()
    argv, sys.argv = sys.argv, list(args)
    try:
        runpy.run_path(args[0], run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    return code, out.out, out.err


def test_every_job_dry_run_prints_resolved_config(capsys):
    jobs = sorted((ROOT / "jobs").glob("*.py"))
    assert any(j.name == "inspect_data.py" for j in jobs)
    for k, job in enumerate(jobs):
        sub = k == 0   # the first one as its own process too (the real entry point); the rest in this interpreter
        code, out, err = _run_job([str(job), "--config", str(ROOT / "configs" / "quickstart.yaml"), "--set",
                                   "data.imbalance_ratio=20", "--dry-run"], capsys, sub)
        assert code == 0, (job.name, err[-2000:])
        resolved = yaml.safe_load(out)
        assert resolved["data"]["imbalance_ratio"] == 20.0, job.name
        code, out, err = _run_job([str(job), "--set", "data.nope=1", "--dry-run"], capsys, sub)
        assert code == 2 and "data.nope" in err, job.name


# ----------------------------------------------------------------------------- one override path


def test_set_and_with_values_give_the_same_unknown_key_error():
    with pytest.raises(ConfigError) as by_set:
        load_config(None, ["classifier.stepz=3"])
    with pytest.raises(ConfigError) as by_values:
        with_values(Config(), {"classifier.stepz": 3})
    assert str(by_set.value) == f"--set classifier.stepz=3: {by_values.value}"
    assert str(by_values.value).startswith("unknown key 'classifier.stepz'; allowed keys in classifier: [")
    with pytest.raises(ConfigError, match=r"unknown key 'bogus'; allowed keys at the top level: \['classifier'"):
        with_values(Config(), {"bogus": 1})


def test_typed_values_and_their_string_forms_give_equal_configs():
    typed = {"train.lr": 1e-3, "train.steps": 7, "sample.classes": [1, 2], "guidance.cfg.omega": 1,
             "resources.use_gpu": True, "run.name": "x", "model.ch_mult": (1, 2), "classifier.milestones": [0.5]}
    text = ["train.lr=1e-3", "train.steps=7", "sample.classes=[1, 2]", "guidance.cfg.omega=1",
            "resources.use_gpu=true", "run.name=x", "model.ch_mult=[1,2]", "classifier.milestones=[0.5]"]
    a, b = with_values(Config(), typed), load_config(None, text)
    assert a == b and a.train.lr == 1e-3 and a.sample.classes == (1, 2) and isinstance(a.guidance.cfg.omega, float)
    with pytest.raises(ConfigError, match=r"train.steps: expected an integer"):
        with_values(Config(), {"train.steps": "7"})   # a typed value is not re-parsed from text


def test_mapping_values_sections_and_dict_fields():
    space = {"train.lr": [1e-4, 2e-4], "guidance.cfg.omega": [0.0, 1.0]}
    a = with_values(Config(), {"tune.space": space})
    b = load_config(None, ["tune.space={train.lr: [1.0e-4, 2e-4], guidance.cfg.omega: [0, 1]}"])
    assert a == b and dict(a.tune.space) == {"train.lr": (1e-4, 2e-4), "guidance.cfg.omega": (0.0, 1.0)}
    # a whole mapping replaces a dict field; field.entry sets one entry
    c = with_values(a, {"tune.space": {"loss.cbdm": [0.5]}})
    assert dict(c.tune.space) == {"loss.cbdm": (0.5,)}
    d = load_config(None, ["tune.space={train.lr: [0.1]}", "tune.space.loss.cbdm=[0.5, 1.0]"])
    assert dict(d.tune.space) == {"train.lr": (0.1,), "loss.cbdm": (0.5, 1.0)}
    # a mapping for a section updates its keys (the others stay), and its keys are checked too
    e = with_values(Config(), {"data": {"imbalance_ratio": 50}})
    assert e.data.imbalance_ratio == 50.0 and e.data.source == "digits"
    with pytest.raises(ConfigError, match=r"unknown key 'data.bogus'; allowed keys in data"):
        with_values(Config(), {"data": {"bogus": 1}})
    with pytest.raises(ConfigError, match=r"tune.space: expected a mapping"):
        with_values(Config(), {"tune.space": [1, 2]})


# ----------------------------------------------------------------------------- layered files


def test_layered_config_files_deep_merge(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("seed: 1\ndata:\n  imbalance_ratio: 50\n  image_size: 8\nsample:\n  classes: [1, 2, 3]\n"
                 "tune:\n  space:\n    train.lr: [0.1]\n")
    b.write_text("data:\n  image_size: 12\nsample:\n  classes: [4]\ntune:\n  space:\n    loss.cbdm: [1.0]\n")
    cfg = load_config([a, b])
    assert cfg.seed == 1 and cfg.data.imbalance_ratio == 50.0        # kept from the first file
    assert cfg.data.image_size == 12                                 # the later file wins per key
    assert cfg.sample.classes == (4,) and dict(cfg.tune.space) == {"loss.cbdm": (1.0,)}  # values replace whole
    assert load_config([b, a]).data.image_size == 8
    assert load_config([a, b], ["data.image_size=16"]).data.image_size == 16   # overrides come last
    assert load_config(str(a)) == load_config([a])


def test_layered_errors_name_the_file_that_set_the_key(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("data:\n  image_size: 8\n")
    b.write_text("data:\n  imbalance_ratio: 0.5\n")
    with pytest.raises(ConfigError, match=r"b.yaml: data.imbalance_ratio: 0.5 is out of range"):
        load_config([a, b])
    b.write_text("data:\n  imbalanse_ratio: 2\n")
    with pytest.raises(ConfigError, match=r"b.yaml: unknown key 'data.imbalanse_ratio'; allowed keys in data"):
        load_config([a, b])
    with pytest.raises(ConfigError, match=r"--set data.image_size=2: data.image_size: 2 is out of range"):
        load_config([a], ["data.image_size=2"])


def test_repeated_yaml_keys_are_refused_with_file_and_key(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("data:\n  source: digits\ntrain:\n  steps: 3\ndata:\n  image_size: 8\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: duplicate key 'data' \(lines 1 and 5\)"):
        load_config(p)
    p.write_text("train:\n  steps: 3\n  lr: 0.1\n  steps: 4\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: duplicate key 'train.steps' \(lines 2 and 4\)"):
        load_config(p)
    p.write_text("!!python/object/apply:os.getcwd []\n")       # still safe loading: no Python tags
    with pytest.raises(ConfigError, match=r"dup.yaml: not valid YAML"):
        load_config(p)


def test_model_keys_are_listed_with_their_preset_source():
    rows = {key: (default, text) for key, _, default, text in describe(Config)}
    default, text = rows["model.ch"]
    assert default is None and "null = from model.preset" in text and "tiny 32" in text and "cbdm 128" in text
    assert "a key set explicitly wins" in rows["model.preset"][1]
