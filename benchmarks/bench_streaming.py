"""Streaming synthetic data into the downstream classifier: peak memory does not grow with the synthetic set.

- downstream_peak_rss_ratio_20x: peak RSS (``ru_maxrss``) of a fresh process running the classifier training stage
  (``stages.train_classifier``, ``extras=False`` as the pipeline's augmented arm; in-process launcher, so the
  process is driver and worker at once) fed 100k synthetic images / fed 5k. Goal <= 1.15.
- downstream_worker_peak_rss_ratio_20x: the same through a 1-worker RayLauncher (a private local Ray in the fresh
  process); the Ray Train worker reports its own VmHWM in its result (``worker_peak_rss_mb``). Goal <= 1.15.
  ``downstream_driver_ray_peak_rss_ratio_20x`` is that run's driver.

Images are 16x16 greyscale (digits), written once as generation-style shards (1000 per shard, with per-shard stats
and a manifest, as ``generate`` writes them); both sizes train the same number of steps. For scale: holding the
100k synthetic images as the training pool (uint8 + float32) would be ~125 MB, the 5k ones ~6 MB; ``--full`` also
measures that reference (``materialised_peak_rss_ratio_20x``: the in-memory ``ImageSet`` path, decoded first).
The dataset artifact is built once before the measured processes (its decoding is not what is measured).
``python benchmarks/bench_streaming.py [--full]``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZE, K, PER_SHARD = 16, 10, 1000

_SNIPPET = r"""
import json, os, resource, sys
sys.path.insert(0, sys.argv[1])
from ltaug.config import load_config
from ltaug.cli import make_launcher
from ltaug.stages import open_run
from ltaug.stages.train_classifier import train_classifier
cfg = load_config(None, sys.argv[3:])
if cfg.resources.num_workers:
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
run = open_run(cfg, "train_classifier", tracked=False)
syn = None
if os.environ.get("BENCH_MATERIALISE"):   # the reference: every synthetic image decoded into memory first
    from ltaug.classify.trainer import load_synthetic
    syn = load_synthetic(cfg.classifier.synthetic_uri, cfg.data.image_size, 1, 10)
s = train_classifier(cfg, run, make_launcher(cfg), extras=False, synthetic=syn)
print(json.dumps({"rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "n": s["num_synthetic"],
                  "worker_mb": s.get("worker_peak_rss_mb"), "steps": s["steps"]}))
"""


def write_shards(d: str, n: int) -> str:
    """``n`` synthetic 16x16x1 images in generation-style shards (stats + manifest); the class cycles."""
    import numpy as np

    from ltaug.generate.shards import ShardStats, build_tar, encode_png

    os.makedirs(os.path.join(d, ".ltaug", "stats"), exist_ok=True)
    rng = np.random.default_rng(0)
    pngs = [encode_png(rng.integers(0, 256, (SIZE, SIZE, 1), dtype=np.uint8)) for _ in range(64)]
    names, tot = [], np.zeros(K, np.int64)
    for s in range(0, n, PER_SHARD):
        ids = range(s, min(n, s + PER_SHARD))
        labels = [i % K for i in ids]
        name = f"gen-bench000-{s // PER_SHARD:06d}.tar"
        data = build_tar([(f"c{c:03d}-{i:07d}", {"png": pngs[i % 64], "cls": str(c).encode()})
                          for i, c in zip(ids, labels)], sort=False)
        with open(os.path.join(d, name), "wb") as fh:
            fh.write(data)
        kept = {c: labels.count(c) for c in set(labels)}
        tot += np.bincount(labels, minlength=K)
        with open(os.path.join(d, ".ltaug", "stats", name.replace(".tar", ".json")), "w") as fh:
            json.dump(ShardStats(s // PER_SHARD, name, "bench", kept=kept, bytes=len(data)).to_dict(), fh)
        names.append(name)
    with open(os.path.join(d, ".ltaug", "manifest.json"), "w") as fh:
        json.dump({"complete": True, "num_shards": len(names), "shards": [{"name": x} for x in names],
                   "per_class": {"kept": tot.tolist()}, "written": int(n)}, fh)
    return d


def _sets(d: str, shards: str, workers: int, steps: int, tag: str) -> list[str]:
    return ["data.source=digits", f"data.image_size={SIZE}", f"classifier.synthetic_uri={shards}",
            "classifier.arch=resnet20", "classifier.width=8", f"classifier.steps={steps}", "classifier.batch_size=64",
            f"classifier.log_every={steps}", "classifier.ckpt_every=0", "classifier.augment=none", "tracking.uri=none",
            f"resources.num_workers={workers}", "resources.cpus_per_worker=1", f"run.output_dir={d}/runs",
            f"run.name=bench-{tag}", f"data.cache_dir={d}/cache"]


def _once(d: str, shards: str, workers: int, steps: int, tag: str, materialise: bool = False) -> dict:
    # a private single-node Ray binds 127.0.0.1 (as the test fixtures' ray_session); one retry of a start-up that
    # timed out on a loaded machine
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "180", **({"BENCH_MATERIALISE": "1"} if materialise else {})}
    for attempt in (0, 1):
        r = subprocess.run([sys.executable, "-c", _SNIPPET, str(ROOT), d, *_sets(d, shards, workers, steps, tag)],
                           capture_output=True, text=True, timeout=1800, env=env)
        if not r.returncode or not (workers and "timed out during startup" in r.stderr and not attempt):
            break
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(quick: bool = True) -> dict:
    small, big = 5_000, 100_000
    steps = 20 if quick else 60
    out: dict = {}
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        paths = {n: write_shards(os.path.join(d, f"syn{n}"), n) for n in (small, big)}
        out["shard_write_s"] = round(time.perf_counter() - t0, 1)
        from ltaug.config import load_config
        from ltaug.stages.data import stage_data

        stage_data(load_config(None, _sets(d, paths[small], 0, steps, "warm")))   # the dataset artifact, built once
        local = {n: _once(d, paths[n], 0, steps, f"local{n}") for n in (small, big)}
        ray = {n: _once(d, paths[n], 1, steps, f"ray{n}") for n in (small, big)}
        mem = {n: _once(d, paths[n], 0, steps, f"mem{n}", materialise=True) for n in (small, big)} if not quick else {}
    assert local[big]["n"] == big and ray[big]["n"] == big, (local, ray)
    mb = lambda r: round(r["rss_kb"] / 1024, 1)  # noqa: E731
    out.update({
        "downstream_peak_rss_ratio_20x": round(local[big]["rss_kb"] / local[small]["rss_kb"], 3),
        "downstream_worker_peak_rss_ratio_20x": round(ray[big]["worker_mb"] / ray[small]["worker_mb"], 3),
        "downstream_driver_ray_peak_rss_ratio_20x": round(ray[big]["rss_kb"] / ray[small]["rss_kb"], 3),
        "downstream_peak_rss_5k_mb": mb(local[small]), "downstream_peak_rss_100k_mb": mb(local[big]),
        "downstream_worker_peak_rss_5k_mb": ray[small]["worker_mb"],
        "downstream_worker_peak_rss_100k_mb": ray[big]["worker_mb"],
        "downstream_driver_ray_peak_rss_5k_mb": mb(ray[small]), "downstream_driver_ray_peak_rss_100k_mb": mb(ray[big]),
        **({"materialised_peak_rss_ratio_20x": round(mem[big]["rss_kb"] / mem[small]["rss_kb"], 3),
            "materialised_peak_rss_5k_mb": mb(mem[small]), "materialised_peak_rss_100k_mb": mb(mem[big])} if mem else {}),
        "downstream_rss_steps": steps, "downstream_rss_image_size": SIZE,
    })
    return {"metrics": {k: out[k] for k in ("downstream_peak_rss_ratio_20x", "downstream_worker_peak_rss_ratio_20x",
                                            "downstream_driver_ray_peak_rss_ratio_20x")},
            "details": out}


if __name__ == "__main__":
    print(json.dumps(run("--full" not in sys.argv), indent=1))
