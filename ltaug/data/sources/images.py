"""Encoded image files (PNG / JPEG / ...): decoding with clear errors, used by imagefolder, list and shards."""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ... import storage
from .common import MAX_IMAGE_FILE_BYTES, MAX_IMAGE_PIXELS, resize

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DECODE_THREADS = 8


class ImageDecodeError(ValueError):
    pass


def _to_8bit(im: Image.Image, where: str) -> Image.Image:
    """16-bit / 32-bit integer gray images scaled to 8 bits (``convert("L")`` would clip them to white)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageDecodeError(f"{where}: {im.mode} pixel values {int(arr.min())}..{int(arr.max())} outside "
                                   f"0..65535; expected an 8- or 16-bit image")
        return Image.fromarray(np.round(arr / 257.0).astype(np.uint8), "L")
    if im.mode == "F":
        raise ImageDecodeError(f"{where}: floating-point image (mode F); save it as an 8- or 16-bit image")
    return im


def decode(data: bytes, where: str, size: int, channels: int) -> np.ndarray:
    """Encoded bytes -> uint8 [size, size, C]; ``channels`` 0 keeps gray as 1 channel, else 3.

    16-bit images are scaled to 8 bits; float images are refused; an image of more than
    ``MAX_IMAGE_PIXELS`` decoded pixels (a decompression bomb) is refused before it is decoded."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS or w <= 0 or h <= 0:
                    raise ImageDecodeError(f"{where}: {w}x{h} pixels, more than the {MAX_IMAGE_PIXELS}-pixel limit "
                                           f"(a decompression bomb?); set LTAUG_MAX_IMAGE_PIXELS if it is real")
                im.load()
                gray = im.mode in ("L", "1", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "LA")
                im8 = _to_8bit(im, where)
                if channels == 1 or (channels == 0 and gray):
                    arr = np.asarray(im8.convert("L"))[..., None]
                else:
                    arr = np.asarray(im8.convert("RGB"))
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"{where}: {e.args[0] if e.args else e}: more than the pixel limit (a decompression "
                               f"bomb?); refusing to decode it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, MemoryError,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from None
    return resize(arr[None], size, arr.shape[-1] if channels == 0 else channels)[0]


def progress(iterable, total: int | None, desc: str, unit: str):
    """A tqdm progress bar on stderr over ``iterable`` (decoding a large source takes minutes); off for small
    inputs, and wherever ``TQDM_DISABLE=1`` / ``LTAUG_PROGRESS=0`` is set."""
    import os

    from tqdm.auto import tqdm

    off = os.environ.get("LTAUG_PROGRESS", "1") == "0" or total is None or total < PROGRESS_MIN
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=off, mininterval=1.0,
                dynamic_ncols=True, leave=False)


PROGRESS_MIN = 500   # inputs smaller than this decode in seconds: no bar


def decode_files(uris: Sequence[str], size: int, channels: int,
                 on_error: Callable[[str], None], desc: str = "decode") -> list[np.ndarray | None]:
    """Decode files in parallel threads (with a progress bar); a failure calls ``on_error(message)`` (raise or
    count)."""
    def one(uri: str) -> np.ndarray | None:
        try:
            return decode(storage.read_bytes(uri, max_bytes=MAX_IMAGE_FILE_BYTES), uri, size, channels)
        except FileNotFoundError:
            return _err(f"{uri}: image file not found")
        except (ImageDecodeError, storage.StorageError) as e:   # not decodable, a directory, a device, too big
            return _err(str(e) if str(e).startswith(uri) else f"{uri}: {e}")

    errors: list[str] = []

    def _err(msg: str) -> None:
        errors.append(msg)
        return None

    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        out = list(progress(pool.map(one, uris), len(uris), desc, "img"))
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
