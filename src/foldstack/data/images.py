"""Decoding image files: any mode and orientation to upright 8-bit RGB, with clear errors."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from foldstack.core.errors import DataError

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
