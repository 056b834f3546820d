"""Images that are not image files (README "Array images"): ``.npy``/``.npz`` arrays of any
channels and dtype, and a table's band columns, read as uint8 ``(H, W, C)`` images.

``data.image_source: arrays`` reads one array per id (``HxW`` or ``HxWxC``) and scales it to
0-255 by ``data.scale``: a fixed ``{min, max}`` (clipped outside it), each image's own minimum
and maximum (``per_image``), or each channel's (``per_channel``). ``column`` tables hold one list
of pixel values per band and row; ``download`` writes each row's bands, stacked into channels,
as ``<train_dir>/<id>.npy`` and ``<test_dir>/<id>.npy`` (:func:`write_bands`), so every later
stage reads arrays. :class:`ImageReader` is what the caches and ``predict --images`` call on
each file, whatever the source.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foldstack.core.config import ARRAY_EXTENSIONS, DataConfig, ScaleRange
from foldstack.core.errors import DataError
from foldstack.data.images import load_rgb
from foldstack.data.tables import read_csv, require_columns

#: A ``.npz`` holding several arrays: the one read.
NPZ_KEY = "image"


@dataclass(frozen=True)
class ImageReader:
    """How a split's files become uint8 ``(H, W, channels)`` images: decoded image files (RGB),
    or arrays scaled as ``scale`` says (``per_image``, ``per_channel``, or ``(min, max)``)."""

    source: str = "files"
    channels: int = 3
    scale: str | tuple[float, float] | None = None

    @classmethod
    def of(cls, data: DataConfig) -> "ImageReader":
        if data.image_source == "files":
            return cls()
        scale = (data.scale.min, data.scale.max) if isinstance(data.scale, ScaleRange) else data.scale
        return cls("arrays", data.image_channels, scale)

    def __call__(self, path: str | Path) -> np.ndarray:
        if self.source == "files":
            return load_rgb(path)
        return scaled(load_array(path, self.channels), self.scale, path)

    @property
    def key(self) -> str:
        """What a cache's pixels depend on beside its ids ("" for image files, so their caches
        keep their keys)."""
        return "" if self.source == "files" else f"# arrays channels={self.channels} scale={self.scale}\n"


def load_array(path: str | Path, channels: int) -> np.ndarray:
    """An array file as ``(H, W, channels)`` (an ``HxW`` array is one channel), its dtype kept.

    A ``.npz`` gives its one array, or its :data:`NPZ_KEY` entry. Raises DataError naming the file
    when it is missing, unreadable, or of another shape or channel count.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as loaded:
                array = _npz_array(loaded, path)
        else:
            array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: array not found") from None
    except (OSError, ValueError, EOFError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path}: cannot read array: {reason}") from None
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] != channels or min(array.shape[:2]) < 1:
        raise DataError(f"{path}: array of shape {tuple(array.shape)}, not HxWx{channels} "
                        f"(data.channels: {channels})" + (" or HxW" if channels == 1 else ""))
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise DataError(f"{path}: array of dtype {array.dtype}, not numbers")
    return array


def _npz_array(loaded, path: Path) -> np.ndarray:
    names = list(loaded.files)
    if len(names) == 1:
        return loaded[names[0]]
    if NPZ_KEY in names:
        return loaded[NPZ_KEY]
    raise DataError(f"{path}: holds arrays {', '.join(names)}; one array, or one named {NPZ_KEY!r}, is the image")


def scaled(array: np.ndarray, scale: str | tuple[float, float] | None, path: str | Path = "array") -> np.ndarray:
    """An array's values onto uint8 0-255: ``(min, max)`` linearly (clipped outside), or
    ``per_image`` / ``per_channel`` min-max (a constant image or channel is 0). NaN is the low end."""
    if scale is None:
        raise DataError(f"{path}: arrays need data.scale")
    values = array.astype(np.float64)
    if isinstance(scale, (tuple, list)):
        low, high = (np.float64(scale[0]), np.float64(scale[1]))
    else:
        axes = (0, 1, 2) if scale == "per_image" else (0, 1)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN channel: nan, then 0 below
            low = np.nan_to_num(np.nanmin(values, axis=axes, keepdims=True))
            high = np.nan_to_num(np.nanmax(values, axis=axes, keepdims=True))
    values = np.where(np.isnan(values), low, values)
    out = (values - low) * (255.0 / np.maximum(high - low, 1e-12))
    return np.clip(out, 0, 255).round().astype(np.uint8)


def display_rgb(image: np.ndarray) -> np.ndarray:
    """An image to look at (pictures of the report, the augmentation preview, Grad-CAM): RGB as it
    is; an array image's first three channels, or the mean of fewer as grey."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 3:
        return image
    if image.shape[-1] > 3:
        return image[..., :3]
    return np.repeat(image.mean(axis=-1, keepdims=True).round().astype(np.uint8), 3, axis=-1)


# --- a column source's bands -----------------------------------------------------------------------


#: What :func:`write_bands` reads of the data config: a download's marker records them
#: (``sources.made_by``), so that changing one (``bands``, ``band_shape``...) lays the bands out again.
BAND_KEYS = frozenset({"train_csv", "test_csv", "train_dir", "test_dir", "id_column", "bands", "band_shape",
                       "extension"})


def band_layout(data: DataConfig) -> dict:
    """The data config's :data:`BAND_KEYS`, as JSON values."""
    return data.model_dump(mode="json", include=set(BAND_KEYS))


def write_bands(folder: Path, data: DataConfig) -> None:
    """A ``column`` source's images, written under ``folder`` (a download being built): each row
    of the train table and of the test table as ``<train_dir|test_dir>/<id>.npy``, ``band_shape``
    with one channel per band (float32).

    Raises:
        DataError: a missing table or band column, a band whose list has the wrong length or a
            value that is not a number: one line naming the file, the row and the band.
    """
    for table, subfolder in ((data.train_csv, data.train_dir), (data.test_csv, data.test_dir)):
        path = folder / table
        frame = read_csv(path, "table of bands", lists=True)
        require_columns(frame, [data.id_column, *data.bands], path)
        target = folder / subfolder
        target.mkdir(parents=True, exist_ok=True)
        first_row = 1 if path.suffix.lower() == ".json" else 2  # a CSV's row 1 is its header
        for i, (image_id, *cells) in enumerate(frame[[data.id_column, *data.bands]].itertuples(index=False)):
            where = f"{path}: row {i + first_row} (id {str(image_id)!r})"
            bands = [_band(cell, data.band_shape, where, band) for cell, band in zip(cells, data.bands)]
            np.save(target / f"{str(image_id).strip()}{data.extension}", np.stack(bands, axis=-1))


def _band(cell, shape: tuple[int, int], where: str, band: str) -> np.ndarray:
    """One band's cell (a JSON list, or a CSV cell of numbers split by commas or spaces, brackets
    allowed) as a float32 ``shape`` array."""
    if isinstance(cell, str):
        cell = [part for part in re.split(r"[\s,\[\]]+", cell) if part]
    try:
        values = np.asarray(cell, dtype=np.float32).ravel()
    except (TypeError, ValueError):
        bad = next((v for v in (cell if isinstance(cell, list) else [cell]) if not _number(v)), cell)
        raise DataError(f"{where}: band {band!r} holds {str(bad)[:40]!r}, not a number") from None
    if values.size != shape[0] * shape[1]:
        raise DataError(f"{where}: band {band!r} holds {values.size} values; band_shape {shape[0]}x{shape[1]} "
                        f"needs {shape[0] * shape[1]}")
    return values.reshape(shape)


def _number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def array_files(folder: Path) -> list[Path]:
    """Every array file under ``folder`` and its sub-folders (hidden ones aside), sorted: what
    ``predict --images`` reads for an array pipeline."""
    return sorted(path for path in folder.rglob("*")
                  if path.is_file() and path.suffix.lower() in ARRAY_EXTENSIONS
                  and not any(part.startswith(".") for part in path.relative_to(folder).parts))

