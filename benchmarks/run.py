"""Benchmark runner: ``python benchmarks/run.py [--quick] [--only NAME ...]``.

Each module in :data:`MODULES` exposes ``run(quick: bool) -> dict`` returning
``{"metrics": {name: number}, "details": {...}}`` (a plain dict of numbers is accepted too). The runner
writes ``benchmarks/results.json``: top-level numeric fields (every module's metrics), plus ``details``
with the absolute figures and ``machine`` describing where it ran. Modules that fail are reported in
``errors`` and do not stop the others.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MODULES = ["bench_diffusion", "bench_ray", "bench_faults"]  # add yours here


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(), "python": platform.python_version(), "platform": platform.platform(),
            "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes in total)")
    ap.add_argument("--only", nargs="*", default=None, help="module names to run (default: all)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results.json"))
    args = ap.parse_args(argv)
    results: dict = {}
    if os.path.exists(args.out):
        try:
            results = json.load(open(args.out))
        except (OSError, ValueError):
            results = {}
    results.setdefault("details", {})
    results["errors"] = {}
    for name in args.only or MODULES:
        t0 = time.perf_counter()
        try:
            mod = importlib.import_module(name)
            out = mod.run(args.quick)
        except Exception as e:  # noqa: BLE001 - report and carry on with the other modules
            results["errors"][name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
            continue
        metrics = out.get("metrics", out) if isinstance(out, dict) else {}
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                results[k] = v
        results["details"][name] = {**(out.get("details", {}) if "metrics" in out else {}),
                                    "seconds": round(time.perf_counter() - t0, 1), "quick": args.quick}
        print(f"{name}: " + json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))}))
    results["machine"] = machine()
    results["command"] = "python benchmarks/run.py" + (" --quick" if args.quick else "")
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2, default=str)
    print(args.out)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
