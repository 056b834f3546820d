"""Decoding image files: any mode and orientation to upright 8-bit RGB, with clear errors.

Pillow reads most formats; DICOM files (``.dcm``, or any file with DICOM's ``DICM`` preamble)
go through ``pydicom``, and TIFF files Pillow cannot decode (float, 16-bit colour, odd sample
layouts) through ``tifffile``. More than 8 bits per sample are scaled to 8 by their type's
range, never clipped.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from foldstack.core.config import hw
from foldstack.core.errors import DataError

# Larger than any real competition image, small enough that a decompression bomb is refused
# before it is decoded (PIL's own default warns at 89 million pixels and fails at twice that).
MAX_PIXELS = 16384 * 16384


#: File endings read as DICOM without a look inside (other files are, when they carry DICOM's preamble).
DICOM_EXTENSIONS = (".dcm", ".dicom")
TIFF_EXTENSIONS = (".tif", ".tiff")


def load_rgb(path: str | Path) -> np.ndarray:
    """An image file as uint8 RGB ``(H, W, 3)``, upright (EXIF orientation applied).

    Grayscale, palette, RGBA (composited on white), CMYK and 16-bit files all come out as 8-bit
    RGB; DICOM through its modality and VOI LUTs (see :func:`_dicom_rgb`). Raises DataError
    naming the file when it cannot be decoded.
    """
    path = Path(path)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return _dicom_rgb(path)
    try:
        with _opened(path) as image:
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image), image.format)
    except DataError:
        fallback = _fallback(path)
        if fallback is None:
            raise
        return fallback(path)


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`inspect` learns of a file: its stored size ``(width, height)`` and PIL mode
    (for a file Pillow cannot read, what its reader says of it)."""

    size: tuple[int, int]
    mode: str


def inspect(path: str | Path) -> ImageInfo:
    """The size and mode of an image, after decoding it all (so a truncated file is caught).

    Faster than :func:`load_rgb`: no conversion, and a JPEG decodes at 1/8 scale, which still
    reads every byte of it.

    Raises:
        DataError: the file is missing, empty, not an image, truncated, or too large.
    """
    path = Path(path)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return _other_info(path, _dicom_rgb, "DICOM")
    try:
        with _opened(path) as image:
            info = ImageInfo(image.size, image.mode)
            image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
            return info
    except DataError:
        fallback = _fallback(path)
        if fallback is None:
            raise
        return _other_info(path, fallback, "DICOM" if fallback is _dicom_rgb else "TIFF")


def _other_info(path: Path, read, kind: str) -> ImageInfo:
    image = read(path)
    return ImageInfo((image.shape[1], image.shape[0]), kind)


def _fallback(path: Path):
    """The reader of a file Pillow could not decode, where it has another: DICOM (by its
    preamble) or TIFF (by its ending); None otherwise."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    with open(path, "rb") as file:
        if file.read(132)[128:] == b"DICM":
            return _dicom_rgb
    return _tiff_rgb if path.suffix.lower() in TIFF_EXTENSIONS else None


def _dicom_rgb(path: Path) -> np.ndarray:
    """A DICOM image (its first frame) as uint8 RGB.

    Greyscale: the modality LUT (RescaleSlope/Intercept) then the VOI LUT or window
    (WindowCenter/Width) are applied, as a viewer shows the image; a windowed image is scaled by
    the window's output range, any other by its own minimum and maximum. MONOCHROME1 (white is
    zero) is inverted. Colour images are converted to RGB by pydicom and scaled by their type.
    """
    import pydicom  # slow to import and needed only for DICOM competitions

    try:
        dataset = pydicom.dcmread(path)
        return _dicom_pixels(dataset, dataset.pixel_array)
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except Exception as error:  # pydicom raises many types for a broken or unsupported file
        raise DataError(f"{path}: cannot read DICOM image: {_reason(error)}") from None


def _dicom_pixels(dataset, pixels: np.ndarray) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if int(dataset.get("SamplesPerPixel", 1)) > 1:  # colour, already RGB (pydicom converts YBR)
        return _scaled(pixels)[..., :3]
    values = apply_modality_lut(pixels, dataset)
    windowed = "WindowCenter" in dataset and "VOILUTSequence" not in dataset
    values = apply_voi_lut(values, dataset) if windowed or "VOILUTSequence" in dataset else values
    low, high = _stored_range(dataset) if windowed else (float(values.min()), float(values.max()))
    grey = np.clip((values - low) * (255.0 / max(high - low, 1e-12)), 0, 255).round().astype(np.uint8)
    if dataset.get("PhotometricInterpretation", "") == "MONOCHROME1":
        grey = 255 - grey
    return np.repeat(grey[..., None], 3, axis=2)


def _stored_range(dataset) -> tuple[float, float]:
    """The range of a greyscale DICOM's values after its modality LUT: where pydicom's windowing
    maps a window's ends."""
    bits = int(dataset.BitsStored)
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if dataset.PixelRepresentation == 1 else (0, 2**bits - 1)
    slope, intercept = float(dataset.get("RescaleSlope", 1)), float(dataset.get("RescaleIntercept", 0))
    return tuple(sorted((low * slope + intercept, high * slope + intercept)))


def _tiff_rgb(path: Path) -> np.ndarray:
    """A TIFF that Pillow cannot decode, through tifffile: its first page as uint8 RGB."""
    import tifffile  # needed only for the TIFFs Pillow cannot read

    try:
        array = np.asarray(tifffile.imread(path, key=0))
    except Exception as error:  # tifffile raises many types for a broken file
        raise DataError(f"{path}: cannot read image: {_reason(error)}") from None
    if array.size == 0:
        raise DataError(f"{path}: cannot read image: no pixels in it")
    array = _scaled(array)
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    if array.shape[-1] in (1, 2):  # grey, grey and alpha
        return np.repeat(array[..., :1], 3, axis=2)
    return array[..., :3]


def _scaled(array: np.ndarray) -> np.ndarray:
    """Samples as uint8 by their type's range (uint16 0-65535 -> 0-255); floats by their own
    minimum and maximum, since a float image has no fixed range."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        low, high = float(info.min), float(info.max)
    else:
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
    scaled = (np.nan_to_num(array.astype(np.float64), nan=low) - low) * (255.0 / max(high - low, 1e-12))
    return np.clip(scaled, 0, 255).round().astype(np.uint8)


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


def _to_rgb(image: Image.Image, file_format: str | None = None) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L") or (image.mode == "I" and file_format == "PNG"):
        # 16-bit grey (Pillow opens a 16-bit PNG as I;16, older versions as I): scaled by the
        # 16-bit range, so the whole range maps onto 8 bits and a dark image stays dark.
        grey = _scaled(np.asarray(image, dtype=np.uint16))
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode == "F":  # float grey (a TIFF): no fixed range, so its own minimum and maximum
        return np.repeat(_scaled(np.asarray(image, dtype=np.float32))[..., None], 3, axis=2)
    if image.mode == "I":
        # 32-bit int grey from other formats: no fixed range is in use; 8 or 16 bits, as the values say.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        grey = np.clip(array * (255.0 / top), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


Size = int | tuple[int, int] | list[int]
"""An image size: ``n`` (square) or ``[height, width]`` (``core.config.hw``)."""


def resize(image: np.ndarray, size: Size) -> np.ndarray:
    """Resize to ``size`` (``n`` square, or ``[height, width]``; bicubic, antialiased when shrinking);
    uint8 ``(H, W, 3)``, ``(H, W)`` or ``(H, W, C)`` (each channel alone)."""
    h, w = hw(size)
    if image.shape[:2] == (h, w):
        return image
    if image.ndim == 3 and image.shape[2] != 3:  # array images: each channel alone, as Pillow's 8-bit grey
        return np.stack([resize(image[..., c], size) for c in range(image.shape[2])], axis=-1)
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC))
