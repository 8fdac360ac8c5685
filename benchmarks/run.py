"""Benchmark runner: ``python benchmarks/run.py [--quick] [--only NAME ...] [--repeats N]``.

Each module in :data:`MODULES` exposes ``run(quick: bool) -> dict`` returning
``{"metrics": {name: number}, "details": {...}}`` (a plain dict of numbers is accepted too). The runner calls
every module ``--repeats`` times (default 3) in one process and publishes, per metric, the **median** of the
repeats as the top-level field of ``benchmarks/results.json`` (counts that must be zero -- lost or duplicated
samples -- publish their worst repeat instead), with ``min``/``max``/``values`` under ``spread``; ``details``
holds each module's absolute figures (of its last repeat) and ``machine`` describes where it ran (1-minute load
before and after). Modules that fail are reported in ``errors`` and do not stop the others. Every run appends
one dated row to the history table of ``benchmarks/RESULTS.md``.
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

MODULES = ["bench_diffusion", "bench_ray", "bench_faults", "bench_streaming", "bench_scale"]  # add yours here


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
    "sampler_guided_vs_unguided": ("<= 1.4", lambda v: v <= 1.4),
    "loss_terms_cost_vs_passes": ("<= 1.0", lambda v: v <= 1.0),
    "unet_flops_fraction_of_peak": (">= 0.8", lambda v: v >= 0.8),
    "sampler_flops_vs_diffusers": (">= 1.3", lambda v: v >= 1.3),
    "generation_pipeline_vs_bare": (">= 0.90", lambda v: v >= 0.9),
    "ray_train_vs_bare": (">= 0.95", lambda v: v >= 0.95),
    "shard_write_vs_raw_upload": (">= 0.9", lambda v: v >= 0.9),
    "generation_peak_rss_ratio_10x": ("<= 1.1", lambda v: v <= 1.1),
    "downstream_peak_rss_ratio_20x": ("<= 1.15", lambda v: v <= 1.15),
    "downstream_worker_peak_rss_ratio_20x": ("<= 1.15", lambda v: v <= 1.15),
    "samples_lost": ("= 0", lambda v: v == 0),
    "duplicates": ("= 0", lambda v: v == 0),
}
WORST = {"samples_lost": max, "duplicates": max}   # published as the worst repeat, not the median
HISTORY = "<!-- history:rows -->"
HISTORY_KEYS = ("unet_flops_fraction_of_peak", "sampler_guided_vs_unguided", "sampler_flops_vs_diffusers",
                "generation_pipeline_vs_bare", "ray_train_vs_bare", "shard_write_vs_raw_upload",
                "loss_terms_cost_vs_passes", "generation_peak_rss_ratio_10x", "downstream_peak_rss_ratio_20x")


def aggregate(runs: list[dict]) -> tuple[dict, dict]:
    """Per metric over the repeats: the published value (median; ``WORST`` keys: the worst) and its spread."""
    import statistics

    keys = [k for k in dict.fromkeys(k for r in runs for k in r)
            if all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in runs if k in r)]
    out, spread = {}, {}
    for k in keys:
        vals = [float(r[k]) for r in runs if k in r]
        v = WORST[k](vals) if k in WORST else statistics.median(vals)
        out[k] = int(v) if all(isinstance(r[k], int) for r in runs if k in r) and float(v).is_integer() else v
        if len(vals) > 1:
            spread[k] = {"min": min(vals), "max": max(vals), "values": vals}
    return out, spread


def append_history(results: dict, path: Path, measured: set[str] | None = None) -> None:
    """One dated row per runner call (medians of the headline ratios, load before/after) under the marker; a
    ratio this call did not measure (``--only``) stays blank, never carried over."""
    m = results.get("machine", {})
    got = set(results) if measured is None else measured
    cells = [f"{results[k]:.3g}" if isinstance(results.get(k), (int, float)) and k in got else "" for k in HISTORY_KEYS]
    row = "| " + " | ".join([time.strftime("%Y-%m-%d %H:%M"), str(results.get("repeats")),
                             f"{m.get('load_avg_1min') or 0:.2f} / {m.get('load_avg_1min_after') or 0:.2f}",
                             *cells]) + " |"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if HISTORY not in text:
        head = "| date | repeats | load before / after | " + " | ".join(f"`{k}`" for k in HISTORY_KEYS) + " |"
        text += ("\n## History of runner calls\n\nMedians of each call's repeats (appended by `benchmarks/run.py`; "
                 "earlier hand-written runs are in the sections above).\n\n" + head + "\n|"
                 + "---|" * (3 + len(HISTORY_KEYS)) + "\n" + HISTORY + "\n")
    text = text.replace(HISTORY, row + "\n" + HISTORY)
    path.write_text(text)
BEGIN, END = "<!-- latest:begin -->", "<!-- latest:end -->"


def render_latest(results: dict, path: Path) -> None:
    """Rewrite the marked table at the top of RESULTS.md from ``results`` (the rest of the file is kept)."""
    m = results.get("machine", {})
    rows = ["| key | median | min | max | goal | met |", "|---|---|---|---|---|---|"]
    spread = results.get("spread", {})
    for k, v in results.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "repeats":
            goal, ok = GOALS.get(k, ("", None))
            lo, hi = (f"{spread[k]['min']:.3g}", f"{spread[k]['max']:.3g}") if k in spread else ("", "")
            rows.append(f"| `{k}` | {v:.3g} | {lo} | {hi} | {goal} | {'' if ok is None else ('yes' if ok(v) else '**no**')} |")
    block = "\n".join([BEGIN, "## Latest run", "",
                        f"Command: `{results.get('command')}` on {m.get('cpu')} ({m.get('cores')} cores, torch "
                        f"{m.get('torch')}, {m.get('torch_threads')} threads, 1-min load {m.get('load_avg_1min')} before, "
                        f"{m.get('load_avg_1min_after')} after), {results.get('repeats')} repeats per module (median, min, max). "
                        f"Modules run: {', '.join(results.get('modules_run', [])) or 'none'}; the other rows are carried "
                        "over from earlier calls (dates in the history table below). "
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
    ap.add_argument("--results-md", default=str(ROOT / "benchmarks" / "RESULTS.md"), help="report to update")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each module in this process (median published)")
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
    results.setdefault("spread", {})
    results["repeats"] = args.repeats
    measured: set[str] = set()
    for name in args.only or MODULES:
        t0 = time.perf_counter()
        runs, out = [], {}
        try:
            mod = importlib.import_module(name)
            for _ in range(args.repeats):
                out = mod.run(args.quick)
                runs.append({k: v for k, v in (out.get("metrics", out) if isinstance(out, dict) else {}).items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)})
        except Exception as e:  # noqa: BLE001 - report and carry on with the other modules
            results["errors"][name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
            continue
        finally:
            torch.set_num_threads(threads)  # a module that pins threads must not change the next one's figures
        metrics, spread = aggregate(runs)
        results.update(metrics)
        measured.update(metrics)
        results["spread"].update(spread)
        if isinstance(out.get("gpu"), dict):     # bench_gpu: its own section (device or the reason there is none)
            results["gpu"] = out["gpu"]
        results["details"][name] = {**(out.get("details", {}) if "metrics" in out else {}),
                                    "seconds": round(time.perf_counter() - t0, 1), "quick": args.quick,
                                    "repeats": len(runs)}
        print(f"{name}: " + json.dumps(metrics))
    results["machine"]["load_avg_1min_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results["modules_run"] = list(args.only or MODULES)
    results["command"] = "python benchmarks/run.py" + (" --quick" if args.quick else "") + \
        (f" --only {' '.join(args.only)}" if args.only else "") + f" --repeats {args.repeats}"
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2, default=str)
    render_latest(results, Path(args.results_md))
    append_history(results, Path(args.results_md), measured)
    print(args.out)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
