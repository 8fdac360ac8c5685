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


# (key, goal text, is the goal met?) for the latest-results table at the top of RESULTS.md
GOALS = {
    "sampler_guided_vs_unguided": ("<= 1.5", lambda v: v <= 1.5),
    "loss_terms_cost_vs_passes": ("<= 1.1", lambda v: v <= 1.1),
    "unet_flops_fraction_of_peak": (">= 0.8", lambda v: v >= 0.8),
    "sampler_flops_vs_diffusers": (">= 1.0", lambda v: v >= 1.0),
    "generation_pipeline_vs_bare": (">= 0.90", lambda v: v >= 0.9),
    "ray_train_vs_bare": (">= 0.95", lambda v: v >= 0.95),
    "shard_write_vs_raw_upload": (">= 0.8", lambda v: v >= 0.8),
    "generation_peak_rss_ratio_10x": ("<= 1.2", lambda v: v <= 1.2),
    "samples_lost": ("= 0", lambda v: v == 0),
    "duplicates": ("= 0", lambda v: v == 0),
}
BEGIN, END = "<!-- latest:begin -->", "<!-- latest:end -->"


def render_latest(results: dict, path: Path) -> None:
    """Rewrite the marked table at the top of RESULTS.md from ``results`` (the rest of the file is kept)."""
    m = results.get("machine", {})
    rows = ["| key | value | goal | met |", "|---|---|---|---|"]
    for k, v in results.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            goal, ok = GOALS.get(k, ("", None))
            rows.append(f"| `{k}` | {v:.3g} | {goal} | {'' if ok is None else ('yes' if ok(v) else '**no**')} |")
    block = "\n".join([BEGIN, "## Latest run", "",
                        f"Command: `{results.get('command')}` on {m.get('cpu')} ({m.get('cores')} cores, torch "
                        f"{m.get('torch')}, {m.get('torch_threads')} threads, 1-min load {m.get('load_avg_1min')}). "
                        f"Errors: {results.get('errors') or 'none'}.", "", *rows, "", END])
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        head, _, rest = text.partition("\n")
        text = (head if head.startswith("# ") else "# Benchmarks") + "\n\n" + block + "\n" + \
            (rest if head.startswith("# ") else text)
    path.write_text(text)


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
    import torch

    results["machine"] = machine()  # before any module runs: thread count and load as the modules found them
    threads = torch.get_num_threads()
    for name in args.only or MODULES:
        t0 = time.perf_counter()
        try:
            mod = importlib.import_module(name)
            out = mod.run(args.quick)
        except Exception as e:  # noqa: BLE001 - report and carry on with the other modules
            results["errors"][name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
            continue
        finally:
            torch.set_num_threads(threads)  # a module that pins threads must not change the next one's figures
        metrics = out.get("metrics", out) if isinstance(out, dict) else {}
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                results[k] = v
        results["details"][name] = {**(out.get("details", {}) if "metrics" in out else {}),
                                    "seconds": round(time.perf_counter() - t0, 1), "quick": args.quick}
        print(f"{name}: " + json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))}))
    results["command"] = "python benchmarks/run.py" + (" --quick" if args.quick else "")
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2, default=str)
    render_latest(results, ROOT / "benchmarks" / "RESULTS.md")
    print(args.out)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
