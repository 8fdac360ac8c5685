"""The suite's scheduling (tests/conftest.py): every test that takes the session's Ray lands in one of the two
session-Ray groups, whole files stay together, parameters do not split a test from its group, and a file that only
names the fixture without a test taking it is refused (it could not be grouped)."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _conftest():
    spec = importlib.util.spec_from_file_location("_suite_conftest", ROOT / "tests" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _takes_session_ray(fn: ast.FunctionDef, names) -> bool:
    return any(a.arg in names for a in fn.args.args)


def test_every_session_ray_test_is_in_a_ray_group_and_files_stay_together():
    c = _conftest()
    groups = c._ray_test_groups()
    expected = {}
    for f in sorted((ROOT / "tests").rglob("test_*.py")):
        rel = f.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test") and \
                    _takes_session_ray(node, c.SESSION_RAY):
                expected.setdefault(rel, []).append(node.name)
    assert expected, "no session-Ray test found: the check below would be vacuous"
    for rel, names in expected.items():
        got = {groups.get(f"{rel}::{n}") for n in names}
        assert len(got) == 1 and got <= set(c.RAY_GROUPS), (rel, got)     # one group per file
        assert groups.get(rel) is None                                     # the file's other tests are free
    used = {g for k, g in groups.items() if g in c.RAY_GROUPS}
    assert used == set(c.RAY_GROUPS)                                       # both groups get work
    # parameters keep a test in its group; tests of no group are scopes of their own
    rel, name = next((r, n[0]) for r, n in expected.items())
    assert c._scope(groups, f"{rel}::{name}[a-1]") == groups[f"{rel}::{name}"]
    assert c._scope(groups, "tests/foundation/test_config.py::test_x[1]") == "tests/foundation/test_config.py::test_x[1]"
    own = [r for r, g in groups.items() if g == "own-ray"]
    assert own and all(c._scope(groups, f"{r}::test_any") == "own-ray" for r in own)


def test_weights_split_the_groups_evenly():
    c = _conftest()
    groups = c._ray_test_groups()
    load = dict.fromkeys(c.RAY_GROUPS, 0)
    for rel in {k.split("::", 1)[0] for k, g in groups.items() if g in c.RAY_GROUPS}:
        load[groups[next(k for k in groups if k.startswith(rel + "::"))]] += c.RAY_WEIGHTS.get(rel, c.DEFAULT_RAY_WEIGHT)
    heaviest = max(c.RAY_WEIGHTS.values())
    assert max(load.values()) - min(load.values()) <= heaviest, load   # greedy largest-first: within one file


def test_a_file_naming_the_fixture_without_a_test_taking_it_is_refused(tmp_path, monkeypatch):
    c = _conftest()
    (tmp_path / "tests").mkdir()
    fixture = c.SESSION_RAY[0]      # not spelled out here: this file itself would then be refused
    (tmp_path / "tests" / "test_hidden.py").write_text(
        f"import pytest\n\n@pytest.mark.usefixtures({fixture!r})\ndef test_x():\n    pass\n")
    monkeypatch.setattr(c, "ROOT", tmp_path)
    with pytest.raises(RuntimeError, match=r"tests/test_hidden\.py names a session-Ray fixture but no test takes it"):
        c._ray_test_groups()
