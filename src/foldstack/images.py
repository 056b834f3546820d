"""Decoding images and the resized cache that training reads.

Every image is decoded, converted to RGB and resized once per image size into a uint8 array on
disk (``cache/<size>/<split>.npy``), which training memory-maps: epochs never decode a file.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from foldstack.errors import DataError
from foldstack.io import atomic_path, write_text

log = logging.getLogger(__name__)

# Larger than any real competition image, small enough that a decompression bomb is refused
# before it is decoded (PIL's own default warns at 89 million pixels and fails at twice that).
MAX_PIXELS = 16384 * 16384


def load_rgb(path: str | Path) -> np.ndarray:
    """An image file as uint8 RGB ``(H, W, 3)``, upright (EXIF orientation applied).

    Grayscale, palette, RGBA (composited on white), CMYK and 16-bit files all come out as 8-bit
    RGB. Raises DataError naming the file when it cannot be decoded.
    """
    with _opened(path) as image:
        image.load()
        return _to_rgb(ImageOps.exif_transpose(image))


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`inspect` learns of a file: its stored size ``(width, height)`` and PIL mode."""

    size: tuple[int, int]
    mode: str


def inspect(path: str | Path) -> ImageInfo:
    """The size and mode of an image, after decoding it all (so a truncated file is caught).

    Faster than :func:`load_rgb`: no conversion, and a JPEG decodes at 1/8 scale, which still
    reads every byte of it.

    Raises:
        DataError: the file is missing, empty, not an image, truncated, or too large.
    """
    with _opened(path) as image:
        info = ImageInfo(image.size, image.mode)
        image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
        return info


@contextmanager
def _opened(path: str | Path) -> Iterator[Image.Image]:
    """``path`` opened with the decompression-bomb guard; any decoding error, in the ``with``
    block too, becomes a DataError naming the file."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            with Image.open(path) as image:
                yield image
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning,
            OSError, SyntaxError, ValueError) as error:
        reason = "empty file" if path.exists() and path.stat().st_size == 0 else _reason(error)
        raise DataError(f"{path}: cannot read image: {reason}") from None


def _reason(error: Exception) -> str:
    text = str(error).split("\n")[0]
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"too many pixels (over {MAX_PIXELS:,}), refused as a possible decompression bomb"
    return text or type(error).__name__


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit int) grey: scale the full range to 8 bits instead of clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        grey = np.clip(array * (255.0 / top), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Square ``size`` x ``size`` resize (bicubic, antialiased when shrinking)."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def cached_images(files: list[str], ids: list[str], size: int, cache_file: Path,
                  desc: str = "decode") -> np.ndarray:
    """A read-only memory map ``(N, size, size, 3)`` uint8 of ``files``, built once.

    The cache is keyed by its ids file: if the ids differ (a new split, a new dataset), it is
    rebuilt. Built under a temporary name, so an interrupted build is never read.
    """
    ids_file = cache_file.with_suffix(".ids")
    wanted = "\n".join(ids) + "\n"
    if cache_file.exists() and ids_file.exists() and ids_file.read_text() == wanted:
        return np.load(cache_file, mmap_mode="r")
    with atomic_path(cache_file) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), size, size, 3))
        for i, path in enumerate(tqdm(files, desc=f"{desc} {size}px", unit="img", leave=False)):
            array[i] = resize(load_rgb(path), size)
        array.flush()
        del array
    write_text(ids_file, wanted)
    log.info("cached %d images at %dpx -> %s", len(files), size, cache_file)
    return np.load(cache_file, mmap_mode="r")
