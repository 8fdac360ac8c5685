"""Generation at scale (issue 12 item 4): ``run(quick) -> dict``; ``python benchmarks/bench_scale.py [--quick]``.

1. ``block_planning``: one Ray Data block (= one task, = one shard) per pending shard - driver cost of
   ``from_items(n rows, override_num_blocks=n)`` through an actor pool (as ``map_shards``), trivial producer, private
   local Ray: time to the first published row, total time, driver peak RSS, for n = 1,000 (whole run) and
   n = 10,000 (to the first row: the planning cost).
2. ``kill_resume``: the real pipeline (``python jobs/generate.py``, tiny 8x8 UNet, 1 sampling step, shards of
   256) on a real two-node Ray cluster on loopback (``benchmarks/cluster.py``), 100k+ planned images
   (quick: 20k); the driver is SIGKILLed at random points several times and re-run each time, then run to
   completion and checked with ``--verify`` (Ray Data tasks over the cluster). Fields: ``samples_lost``,
   ``duplicates`` (both must be 0), ``scale_planned_images``, ``kills``, ``driver_peak_rss_mb`` per run and
   ``generation_driver_rss_ratio`` (largest / smallest per-run driver peak: flat means ~1, i.e. the driver
   does not grow with the shards already published or listed).
3. ``shard_bytes``: measured tar bytes per sample against ``estimate_sample_bytes`` (what
   ``generate.shard_target_mb`` divides by) at 8x8x1 and 32x32x3.
"""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "generate"))

PLANNING = r'''
import os, sys, time, threading, json
import numpy as np
os.environ.update(RAY_DATA_DISABLE_PROGRESS_BARS="1", RAY_USAGE_STATS_ENABLED="0",
                  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
import psutil, ray
n, whole = int(sys.argv[1]), sys.argv[2] == "1"
ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False)
class A:
    def __call__(self, b):
        return {"shard": np.asarray(b["id"]), "tar": np.asarray([b"x" * 3000] * len(b["id"]), dtype=object)}
proc = psutil.Process(); peak = [proc.memory_info().rss]; rss0 = peak[0]
def sample():
    while True:
        peak[0] = max(peak[0], proc.memory_info().rss); time.sleep(0.1)
threading.Thread(target=sample, daemon=True).start()
ray.data.DataContext.get_current().execution_options.preserve_order = False
t0 = time.time()
ds = ray.data.from_items([{"id": i} for i in range(n)], override_num_blocks=n).map_batches(
        A, batch_size=1, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1, zero_copy_batch=True)
first, rows, seen = None, 0, set()
for r in ds.iter_rows():
    first = first if first is not None else time.time() - t0
    rows += 1; seen.add(int(r["shard"]))
    if not whole:
        break
print(json.dumps({"n": n, "rows": rows, "unique": len(seen), "first_row_s": round(first, 2),
                  "total_s": round(time.time() - t0, 2), "rss0_mb": rss0 >> 20, "peak_mb": peak[0] >> 20}))
'''


def block_planning(n: int, whole: bool) -> dict:
    r = subprocess.run([sys.executable, "-c", PLANNING, str(n), "1" if whole else "0"], capture_output=True,
                       text=True, timeout=3600, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]   # Ray may print after the result
    if not lines:
        raise RuntimeError(f"block planning printed no result: stdout {r.stdout[-1000:]!r}, stderr {r.stderr[-1000:]!r}")
    return json.loads(lines[-1])


def shard_bytes() -> dict:
    import numpy as np

    from ltaug.generate import GenerationPlan, ShardProducer
    from ltaug.generate.shards import estimate_sample_bytes

    out = {}
    for size, ch in ((8, 1), (32, 3)):
        plan = GenerationPlan.from_counts((0,), budget=(64,), shard_size=64)

        def gen(rows, size=size, ch=ch):
            rng = np.random.default_rng(int(rows["seed"][0]) % 2**32)   # noise-like: the worst case for PNG
            return {**rows, "image": rng.integers(0, 256, (len(rows["id"]), size, size, ch), dtype=np.uint8)}
        data, _ = ShardProducer(plan, gen, None, 64)(0)
        out[f"{size}x{size}x{ch}"] = {"measured": round(len(data) / 64, 1), "estimate": estimate_sample_bytes(size, ch)}
    return out


def _rss_mb(pid: int) -> float:
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return 0.0


def kill_resume(quick: bool, seed: int = 0) -> dict:
    from cluster import two_nodes
    from fakes import tiny_diffusion_checkpoint

    rng = random.Random(seed)
    target = 5020 if quick else 25020            # COUNTS (20, 12, 6, 3) topped up: 20,039 / 100,039 images
    kills = 2 if quick else 4
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    diff = tiny_diffusion_checkpoint(str(work / "diff.pt"))
    out, runs = work / "out", work / "runs"
    sets = [f"model.checkpoint={diff}", f"generate.output_uri={out}", f"run.output_dir={runs}", "tracking.uri=none",
            "sample.steps=1", "generate.shard_size=256", "generate.batch_size=256", "generate.minority_score=false",
            f"generate.target_per_class={target}", "resources.num_workers=2", "resources.cpus_per_worker=0.6",
            "generate.encode_cpus=0.5",   # 2 samplers x 0.6 + one encoder fit the 2 nodes x 1 CPU
            "eval.grid_per_class=2", "run.shared_fs=true"]     # both nodes are this machine: one disk
    args = [sys.executable, str(ROOT / "jobs" / "generate.py")] + [a for s in sets for a in ("--set", s)]
    planned = sum(max(0, target - c) for c in (20, 12, 6, 3))
    n_shards = -(-planned // 256)
    runs_info: list[dict] = []
    t_start = time.time()
    with two_nodes(cpus=1) as cluster:
        def drive(extra: list[str], kill_after: int | None, timeout: float = 3000) -> dict:
            log = open(work / f"driver-{len(runs_info)}.log", "wb")
            t0 = time.time()
            before = len(list(out.glob("*.tar"))) if out.exists() else 0
            proc = subprocess.Popen(args + extra, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=cluster["env"])
            peak, killed = 0.0, False
            try:
                while proc.poll() is None and time.time() - t0 < timeout:
                    peak = max(peak, _rss_mb(proc.pid))
                    if kill_after is not None and out.exists() and len(list(out.glob("*.tar"))) - before >= kill_after:
                        proc.send_signal(signal.SIGKILL)          # our own child, by pid
                        killed = True
                        break
                    time.sleep(0.1)
            finally:
                if proc.poll() is None and not killed:
                    proc.kill()
                proc.wait(60)
                log.close()
            after = len(list(out.glob("*.tar"))) if out.exists() else 0
            info = {"rc": proc.returncode, "killed": killed, "seconds": round(time.time() - t0, 1),
                    "driver_peak_rss_mb": round(peak, 1), "tars_before": before, "tars_after": after}
            runs_info.append(info)
            return info

        for _ in range(kills):
            left = n_shards - (len(list(out.glob("*.tar"))) if out.exists() else 0)
            info = drive([], kill_after=max(1, rng.randint(left // (kills + 3), left // (kills + 1))))
            if not info["killed"] and info["rc"] != 0:
                raise RuntimeError((work / f"driver-{len(runs_info) - 1}.log").read_text()[-3000:])
        final = drive([], None)
        if final["rc"] != 0:
            raise RuntimeError((work / f"driver-{len(runs_info) - 1}.log").read_text()[-3000:])
        gen_seconds = round(time.time() - t_start, 1)
        ver = drive(["--verify"], None)
        vlog = (work / f"driver-{len(runs_info) - 1}.log").read_text()
        if ver["rc"] != 0:
            raise RuntimeError(vlog[-3000:])
    run_dir = Path(vlog.strip().splitlines()[-1])
    rep = json.loads((run_dir / "verify.json").read_text())
    lost = int(rep["missing"]) + max(0, planned - int(rep["samples"]) - int(rep["dropped"]))
    gen_runs = runs_info[:-1]
    peaks = [r["driver_peak_rss_mb"] for r in gen_runs if r["driver_peak_rss_mb"]]
    return {"samples_lost": lost, "duplicates": int(rep["duplicates"]), "scale_planned_images": planned,
            "kills": sum(r["killed"] for r in gen_runs), "scale_shards": n_shards,
            "driver_peak_rss_mb": peaks, "generation_driver_rss_ratio": round(max(peaks) / min(peaks), 3),
            "scale_generation_seconds": gen_seconds, "verify_seconds": ver["seconds"], "runs": runs_info,
            "verify": {k: rep[k] for k in ("ok", "samples", "dropped", "missing", "duplicates", "bad",
                                           "shards_found", "shards_expected")}}


def run(quick: bool = False) -> dict:
    details: dict = {"shard_bytes": shard_bytes()}
    details["block_planning"] = [block_planning(300 if quick else 1000, True),
                                 block_planning(2000 if quick else 10000, False)]
    sim = kill_resume(quick)
    details["kill_resume"] = sim
    small, big = details["block_planning"]
    metrics = {k: sim[k] for k in ("samples_lost", "duplicates", "scale_planned_images", "kills",
                                   "generation_driver_rss_ratio")}
    metrics["driver_rss_mb_per_1k_blocks"] = round((big["peak_mb"] - big["rss0_mb"]) / (big["n"] / 1000), 1)
    metrics["first_row_s_at_10k_blocks" if not quick else "first_row_s_at_2k_blocks"] = big["first_row_s"]
    return {"metrics": metrics, "details": details}


if __name__ == "__main__":
    res = run("--quick" in sys.argv)
    print(json.dumps(res, indent=1))
