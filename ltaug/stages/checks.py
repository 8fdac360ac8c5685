"""Checks that run before any work: a given checkpoint must fit the run's data (image side, channels, classes).

A classifier trained at 16x16 silently filtering 8x8 samples, or a class-count mismatch failing mid-run with an
IndexError, becomes one error naming the config key, both shapes and what to do. The checkpoint-level checks
(kind, architecture record, weights) are those of the generate stage."""
from __future__ import annotations

from ..data import LTDataset
from ..train import checkpoint as ckpt_io
from .generate import ModelShape, check_classifier_checkpoint, check_diffusion_checkpoint


def data_shape(data: LTDataset) -> ModelShape:
    return ModelShape(data.train.image_size, data.train.channels, data.num_classes)


def _compare(key: str, uri: str, got: ModelShape, want: ModelShape) -> None:
    problems = [f"{what} {a} vs {b}" for what, a, b in (("image size", got.image_size, want.image_size),
                                                         ("channels", got.channels, want.channels),
                                                         ("classes", got.num_classes, want.num_classes)) if a != b]
    if problems:
        raise ValueError(f"{key}={uri} ({got.text()}) does not fit this run's data ({want.text()}): "
                         f"{'; '.join(problems)}. Use a checkpoint trained on this data at this image size, or set "
                         f"data.image_size / data.channels to match it")


def check_classifier_fits(key: str, uri: str, data: LTDataset) -> str:
    """The classifier checkpoint ``uri`` (file or directory) fits ``data``; returns the resolved file URI."""
    ck = ckpt_io.open_checkpoint(uri)
    shape, _ = check_classifier_checkpoint(ck["_uri"], ck)
    _compare(key, ck["_uri"], shape, data_shape(data))
    return ck["_uri"]


def check_diffusion_fits(key: str, uri: str, data: LTDataset, use_ema: bool = True) -> str:
    """The diffusion checkpoint ``uri`` fits ``data``; returns the resolved file URI."""
    ck = ckpt_io.open_checkpoint(uri)
    shape = check_diffusion_checkpoint(ck["_uri"], ck, use_ema)
    _compare(key, ck["_uri"], shape, data_shape(data))
    return ck["_uri"]


__all__ = ["check_classifier_fits", "check_diffusion_fits", "data_shape"]
