"""The strict config loader: unknown keys, types, ranges, overrides, secrets, YAML round trip."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ltaug.config import Config, ConfigError, config_to_yaml, digest, flat_params, from_dict, load_config

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
    (["data.source.x=1"], ["data.source", "expected a string"]),
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


def test_every_job_dry_run_prints_resolved_config():
    jobs = sorted((ROOT / "jobs").glob("*.py"))
    assert any(j.name == "inspect_data.py" for j in jobs)
    for job in jobs:
        out = subprocess.run([sys.executable, str(job), "--config", str(ROOT / "configs" / "quickstart.yaml"),
                              "--set", "data.imbalance_ratio=20", "--dry-run"],
                             capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert out.returncode == 0, (job.name, out.stderr[-2000:])
        resolved = yaml.safe_load(out.stdout)
        assert resolved["data"]["imbalance_ratio"] == 20.0, job.name
        bad = subprocess.run([sys.executable, str(job), "--set", "data.nope=1", "--dry-run"],
                             capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert bad.returncode == 2 and "data.nope" in bad.stderr, job.name
