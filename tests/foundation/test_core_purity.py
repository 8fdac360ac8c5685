"""Layering, checked on the code itself: ``ray`` only in ``ltaug/distributed/``, ``mlflow`` only in ``ltaug/track/``,
the core and the stages import with both blocked, and nothing below the CLI imports the CLI or the Ray layer."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ("config", "storage", "data", "diffusion", "classify", "train", "generate", "eval", "track", "stages")

SCRIPT = r"""
import builtins, importlib, pkgutil, sys
real = builtins.__import__
def guard(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and name.split(".")[0] in ("ray", "mlflow"):
        raise ImportError(f"imported {name}")
    return real(name, globals, locals, fromlist, level)
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


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every imported module name of a file (absolute form; relative imports resolved), with its line."""
    rel = path.relative_to(ROOT).with_suffix("").parts
    pkg = rel[:-1] if rel[-1] != "__init__" else rel[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(pkg[: len(pkg) - node.level + 1]) if node.level else ""
            mod = ".".join(p for p in (base, node.module or "") if p)
            out.append((mod, node.lineno))
            out += [(f"{mod}.{a.name}", node.lineno) for a in node.names]
    return out


def _offenders(rule) -> list[str]:
    bad = []
    for p in sorted((ROOT / "ltaug").rglob("*.py")):
        rel = p.relative_to(ROOT / "ltaug").as_posix()
        for name, line in _imports(p):
            if rule(rel, name):
                bad.append(f"ltaug/{rel}:{line} imports {name}")
    return bad


def test_core_and_stages_import_without_ray_and_mlflow():
    out = subprocess.run([sys.executable, "-c", SCRIPT % (CORE,)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok")


def test_ray_only_in_distributed_and_mlflow_only_in_track():
    assert not _offenders(lambda rel, name: name.split(".")[0] == "ray" and not rel.startswith("distributed/"))
    assert not _offenders(lambda rel, name: name.split(".")[0] == "mlflow" and not rel.startswith("track/"))


def test_no_layer_climbs_back_up_into_the_cli_or_the_ray_layer():
    below_cli = lambda rel: rel != "cli.py"  # noqa: E731
    assert not _offenders(lambda rel, name: below_cli(rel) and name.startswith("ltaug.cli"))
    assert not _offenders(lambda rel, name: not rel.startswith("distributed/") and rel != "cli.py"
                          and name.startswith("ltaug.distributed"))


def test_the_rule_checker_sees_a_lazy_import(tmp_path):
    """The AST walk finds imports inside functions too (what a text search for 'import ray' at the top would miss)."""
    p = ROOT / "ltaug" / "_probe_layering.py"
    p.write_text("def f():\n    from .distributed import launcher\n    import mlflow.tracking\n")
    try:
        names = [n for n, _ in _imports(p)]
    finally:
        p.unlink()
    assert "ltaug.distributed" in names and "mlflow.tracking" in names
