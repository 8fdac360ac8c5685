"""``keep_freed_memory``: after it, memory a process frees stays mapped for reuse (glibc); before it, glibc hands
a large freed block straight back to the kernel. Measured in fresh processes (the policy is process-wide)."""
from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SNIPPET = """
import sys
sys.path.insert(0, sys.argv[1])
from ltaug.train.allocator import keep_freed_memory
def rss_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20
applied = keep_freed_memory() if sys.argv[2] == "1" else False
before = rss_mb()
block = bytearray(256 * 2**20)       # touched: zero-filled by the allocator or the kernel
for i in range(0, len(block), 4096):
    block[i] = 1
held = rss_mb()
del block
print(applied, round(held - before), round(rss_mb() - before))
"""


def _run(flag: str) -> tuple[str, int, int]:
    out = subprocess.run([sys.executable, "-c", SNIPPET, str(ROOT), flag], capture_output=True, text=True,
                         timeout=120, check=True)
    applied, held, after = out.stdout.split()
    return applied, int(held), int(after)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_memory_is_kept_only_with_the_policy():
    applied, held, after = _run("0")
    assert applied == "False" and held >= 250 and after < 50           # glibc's default: handed back on free
    applied, held, after = _run("1")
    assert applied == "True" and held >= 250 and after >= 250          # kept for the next step's tensors
