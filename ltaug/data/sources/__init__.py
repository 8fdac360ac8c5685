"""Dataset sources: ``SOURCES[name](cfg.data, split) -> ImageSet`` (split: ``train`` or ``test``).

Every source reads through fsspec (``ltaug.storage``), so ``s3://`` works like a local path.
"""
from __future__ import annotations

from typing import Callable

from ...config import DataConfig
from ..types import ImageSet
from .common import DataError
from .digits import load_digits_split

Source = Callable[[DataConfig, str], ImageSet]

SOURCES: dict[str, Source] = {
    "digits": load_digits_split,
}

__all__ = ["SOURCES", "DataError", "Source"]
