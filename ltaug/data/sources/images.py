"""Encoded image files (PNG / JPEG / ...): decoding with clear errors, used by imagefolder, list and shards."""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ... import storage
from .common import resize

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DECODE_THREADS = 8


class ImageDecodeError(ValueError):
    pass


def decode(data: bytes, where: str, size: int, channels: int) -> np.ndarray:
    """Encoded bytes -> uint8 [size, size, C]; ``channels`` 0 keeps gray as 1 channel, else 3."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if channels == 1 or (channels == 0 and im.mode in ("L", "1", "I", "I;16", "F")):
                arr = np.asarray(im.convert("L"))[..., None]
            else:
                arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from None
    return resize(arr[None], size, arr.shape[-1] if channels == 0 else channels)[0]


def decode_files(uris: Sequence[str], size: int, channels: int,
                 on_error: Callable[[str], None]) -> list[np.ndarray | None]:
    """Decode files in parallel threads; a failure calls ``on_error(message)`` (raise or count)."""
    def one(uri: str) -> np.ndarray | None:
        try:
            return decode(storage.read_bytes(uri), uri, size, channels)
        except FileNotFoundError:
            return _err(f"{uri}: image file not found")
        except ImageDecodeError as e:
            return _err(str(e))

    errors: list[str] = []

    def _err(msg: str) -> None:
        errors.append(msg)
        return None

    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        out = list(pool.map(one, uris))
    for msg in errors:
        on_error(msg)
    return out


def stack(arrays: list[np.ndarray], where: str) -> np.ndarray:
    if not arrays:
        return np.zeros((0, 1, 1, 1), dtype=np.uint8)
    chans = {a.shape[-1] for a in arrays}
    if len(chans) > 1:  # mixed gray / colour files: promote to colour
        arrays = [np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a for a in arrays]
    return np.stack(arrays)
