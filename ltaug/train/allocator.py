"""The C allocator's policy for training and sampling processes: freed memory is kept for reuse.

A training or sampling step frees and re-allocates the same activation sizes every step. By default glibc
serves each large block with a fresh ``mmap`` and hands it back on free, so every step page-faults its
activations in again. Measured on the 2-core machine (benchmarks/RESULTS.md, "Kernels, the guided sampler and
Ray workers"):

- tiny-UNet training: 11.6-11.9 -> 13.1-13.8 steps/s;
- the sampler's guided step: 4.6-5.0 -> 3.5-3.9 plain forwards;
- peak RSS: +7 MB.

The process then keeps its high-water mark of memory, which it needed anyway. Only glibc has ``mallopt``; on
other C libraries (macOS, musl) this is a no-op and :func:`keep_freed_memory` says so by returning False.
``LTAUG_KEEP_FREED_MEMORY=0`` switches it off.
"""
from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3     # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 1 << 30                        # blocks below 1 GiB come from the heap, not a fresh mmap
TRIM_THRESHOLD = 2**31 - 1                      # never trim the heap's top back to the kernel
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the policy to this process (idempotent). True when glibc took both settings."""
    global _applied
    if _applied is None:
        _applied = False
        if os.environ.get("LTAUG_KEEP_FREED_MEMORY", "1") != "0" and platform.libc_ver()[0] == "glibc":
            libc = ctypes.CDLL(None)
            _applied = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
                bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
