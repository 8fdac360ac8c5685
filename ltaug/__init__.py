"""ltaug: diffusion-based data augmentation for long-tailed image datasets.

The core (config, data, diffusion, classify, train, generate, eval) is pure PyTorch / NumPy;
``ltaug.track`` holds the only mlflow import and ``ltaug.distributed`` the only ray imports.
"""
__version__ = "0.1.0"
