"""Dataset sources: ``SOURCES[name](cfg.data, split) -> ImageSet`` (split: ``train`` or ``test``).

Every source reads through fsspec (``ltaug.storage``), so ``s3://`` works like a local path.
"""
from __future__ import annotations

from typing import Callable

from ...config import DataConfig
from ..types import ImageSet
from .common import DataError
from .cifar import load_cifar_split
from .digits import load_digits_split
from .folder import load_imagefolder_split, load_list_split
from .idx import load_idx_split


def _webdataset(cfg: DataConfig, split: str) -> ImageSet:
    from ..shards import load_webdataset_split

    return load_webdataset_split(cfg, split)


Source = Callable[[DataConfig, str], ImageSet]

SOURCES: dict[str, Source] = {
    "digits": load_digits_split,
    "mnist": load_idx_split,
    "fashion_mnist": load_idx_split,
    "cifar10": load_cifar_split,
    "cifar100": load_cifar_split,
    "imagefolder": load_imagefolder_split,
    "imagenet_lt": load_list_split,
    "webdataset": _webdataset,
}

__all__ = ["SOURCES", "DataError", "Source"]
