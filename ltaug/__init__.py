"""ltaug: diffusion-based data augmentation for long-tailed image datasets.

The core (config, data, diffusion, classify, train, generate, eval) is pure PyTorch / NumPy;
``ltaug.track`` holds the only mlflow import and ``ltaug.distributed`` the only ray imports.
"""
# OpenMP's wait policy is left to libgomp's default (spin briefly, then sleep): measured on the 2-core machine
# (benchmarks/RESULTS.md, "Kernels, the guided sampler and Ray workers"), forcing OMP_WAIT_POLICY=PASSIVE made
# an idle machine's training steps 1.5x and sampling 2.9x slower (a futex wake-up per parallel region of a small
# UNet), while it helps only when other processes contend for the same cores (then 1.6x faster). Ray schedules
# workers by their CPUs and sets OMP_NUM_THREADS to match, so ltaug's own processes do not contend; on a machine
# shared with other work, set OMP_WAIT_POLICY=PASSIVE yourself (before Python starts; the tests do).

__version__ = "0.1.0"
