"""The benchmark runner publishes medians of repeats (worst case for lost/duplicated samples), their spread, and
appends one dated history row per call; a fake module stands in for the real benchmarks."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import run as runner  # noqa: E402


def test_aggregate_median_and_worst():
    runs = [{"a": 1.0, "samples_lost": 0, "n": 3}, {"a": 5.0, "samples_lost": 2, "n": 3}, {"a": 2.0, "samples_lost": 0, "n": 3}]
    out, spread = runner.aggregate(runs)
    assert out["a"] == 2.0 and spread["a"] == {"min": 1.0, "max": 5.0, "values": [1.0, 5.0, 2.0]}
    assert out["samples_lost"] == 2          # the worst repeat, never a median that hides a loss
    assert out["n"] == 3 and isinstance(out["n"], int)


def test_runner_repeats_module_and_keeps_history(tmp_path, monkeypatch):
    mod = tmp_path / "bench_fake.py"
    mod.write_text("calls = []\n"
                   "def run(quick):\n"
                   "    calls.append(quick)\n"
                   "    return {'metrics': {'ray_train_vs_bare': [0.9, 1.0, 0.5][(len(calls) - 1) % 3]}, 'details': {'k': len(calls)}}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out, md = tmp_path / "results.json", tmp_path / "RESULTS.md"
    md.write_text("# Benchmarks\n\nnotes kept\n")
    for _ in range(2):
        assert runner.main(["--quick", "--only", "bench_fake", "--out", str(out), "--results-md", str(md)]) == 0
    res = json.loads(out.read_text())
    assert res["ray_train_vs_bare"] == 0.9 and res["repeats"] == 3
    assert res["spread"]["ray_train_vs_bare"]["min"] == 0.5 and res["details"]["bench_fake"]["repeats"] == 3
    text = md.read_text()
    assert "notes kept" in text and "| `ray_train_vs_bare` | 0.9 | 0.5 | 1 | >= 0.95 | **no** |" in text
    assert text.count(runner.HISTORY) == 1
    hist = text[text.index("## History"):]
    assert sum(1 for ln in hist.splitlines() if ln.startswith("| 20")) == 2   # one dated row per call
