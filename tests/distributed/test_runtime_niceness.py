"""A private local Ray started by ``ensure_ray`` runs its workers at niceness 0, not Ray's default 15 (at 15 a
multi-threaded sampling or training step stalls whenever one of Ray's own processes wakes up)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SNIPPET = """
import os, ray
from ltaug.distributed.runtime import ensure_ray
ensure_ray(num_cpus=1)
print("NICE", ray.get(ray.remote(num_cpus=1)(lambda: os.nice(0)).remote()), os.nice(0))
ray.shutdown()
"""


def test_private_ray_workers_run_at_niceness_zero():
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("NICE")][-1]
    worker, driver = map(int, line.split()[1:])
    assert worker == driver == os.nice(0) == 0, line
