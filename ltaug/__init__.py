"""ltaug: diffusion-based data augmentation for long-tailed image datasets.

The core (config, data, diffusion, classify, train, generate, eval) is pure PyTorch / NumPy;
``ltaug.track`` holds the only mlflow import and ``ltaug.distributed`` the only ray imports.
"""
import os

# OpenMP threads that spin-wait stall badly when cores are shared (measured here: a 0.8M-parameter UNet step
# took 8.0 s with 2 spinning threads on a loaded 2-core machine, 0.40 s with passive waiting, 0.33 s with
# 1 thread). Takes effect only if ltaug is imported before torch; an explicit setting always wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
