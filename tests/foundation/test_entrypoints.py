"""[project.scripts] entry points: each names a function that runs its job through job_main."""
from __future__ import annotations

import pytest as _pytest
tomllib = _pytest.importorskip("tomllib")
from pathlib import Path

import pytest

import ltaug.cli as ep

ROOT = Path(__file__).resolve().parents[2]
JOBS = sorted(p.stem for p in (ROOT / "jobs").glob("*.py"))


def test_every_job_has_an_entry_point():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert sorted(scripts) == sorted(f"ltaug-{j.replace('_', '-')}" for j in JOBS)
    for name, target in scripts.items():
        mod, fn = target.split(":")
        assert mod == "ltaug.cli" and callable(getattr(ep, fn)) and fn == name[len("ltaug-"):].replace("-", "_") + "_main"


@pytest.mark.parametrize("job", JOBS)
def test_entry_point_dry_run_prints_the_run_dir(job, capsys):
    assert getattr(ep, f"{job}_main")(["--config", str(ROOT / "configs" / "quickstart.yaml"), "seed=5", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "seed: 5" in out and f"# run directory: " in out and f"{job}-" in out.splitlines()[-1]
