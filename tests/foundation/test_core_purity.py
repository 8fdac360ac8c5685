"""The core never imports ray or mlflow: import every core module with both blocked."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ("config", "storage", "data", "diffusion", "classify", "train", "generate", "eval")

SCRIPT = r"""
import builtins, importlib, pkgutil, sys
real = builtins.__import__
def guard(name, *a, **k):
    if name.split(".")[0] in ("ray", "mlflow"):
        raise ImportError(f"core imported {name}")
    return real(name, *a, **k)
builtins.__import__ = guard
import ltaug
for pkg in %r:
    try:
        mod = importlib.import_module("ltaug." + pkg)
    except ModuleNotFoundError as e:
        if e.name == "ltaug." + pkg:
            continue
        raise
    for info in pkgutil.walk_packages(getattr(mod, "__path__", []), "ltaug." + pkg + "."):
        importlib.import_module(info.name)
print("ok", sorted(m for m in sys.modules if m.startswith("ltaug.")).__len__())
"""


def test_core_imports_without_ray_and_mlflow():
    out = subprocess.run([sys.executable, "-c", SCRIPT % (CORE,)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok")


def test_only_adapters_import_ray_and_mlflow():
    offenders = []
    for p in (ROOT / "ltaug").rglob("*.py"):
        rel = p.relative_to(ROOT / "ltaug").as_posix()
        text = p.read_text()
        if ("import ray" in text or "from ray" in text) and not rel.startswith("distributed/"):
            offenders.append(rel)
        if ("import mlflow" in text or "from mlflow" in text) and rel != "track/mlflow_tracker.py" and not rel.startswith("distributed/"):
            offenders.append(rel)
    assert not offenders, offenders
