"""The resized image cache that training reads: its one owner (written here, read through
:func:`open_images`).

Every image is decoded, converted to RGB and resized once per image size and cache format
(:class:`CacheFormat`), so epochs never decode a competition file:

- ``raw`` (the default): a uint8 array on disk (``cache/<size>/<split>.npy``), memory-mapped.
- ``jpeg``, ``png``, ``webp``: each image encoded, all of them in one file with an offset index
  (``cache/<size>-<format>/<split>.pack``, :class:`EncodedImages`), decoded per batch in the
  loader's worker threads (libjpeg-turbo through simplejpeg for JPEG, OpenCV for PNG and WebP;
  both release the GIL). PNG and lossless WebP (``quality`` left out) keep the pixels; JPEG's
  quality (default :data:`JPEG_QUALITY`) is part of the folder's name and of the file's header.

A pack's header holds its format, shape and the digest of its ids, so a pack is never read
for other ids; it is built under a temporary name and renamed, after the disk was checked
(:func:`check_room`: raw's bytes exactly, an encoded format's from its first
:data:`SAMPLE` images).

A build reads, resizes and encodes :data:`BUILD_THREADS` images at once (Pillow, OpenCV and
simplejpeg let go of the GIL while they work) and writes them in order, :data:`CHUNK` at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import numpy as np
from tqdm.auto import tqdm

from foldstack.core.config import CacheConfig, ModelConfig, hw
from foldstack.core.errors import DataError, FoldstackError
from foldstack.core.files import atomic_path, has_key, write_text
from foldstack.data.arrays import ImageReader
from foldstack.data.images import Size, resize

log = logging.getLogger(__name__)


#: Room for a ``.npy`` header and the ids file beside the pixels, at most.
HEADER_BYTES = 1 << 20
#: JPEG's quality where the pipeline names none.
JPEG_QUALITY = 90
#: Images encoded before an encoded cache's size is estimated (and the disk checked).
SAMPLE = 16
#: An encoded cache's estimate is its sample's mean times the images, times this margin.
MARGIN = 1.15

#: Threads a cache build reads, resizes and encodes images on: ``FOLDSTACK_BUILD_THREADS``, else
#: the cores this process may use, at most 8.
BUILD_THREADS = int(os.environ.get("FOLDSTACK_BUILD_THREADS") or min(
    8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))

#: Images a build's threads take at once: their results wait in memory until written in order.
CHUNK = 64
#: The first bytes of a pack file.
MAGIC = b"FSPACK1\n"
FORMATS = ("raw", "jpeg", "png", "webp")


@dataclass(frozen=True)
class CacheFormat:
    """How a cache stores each image: ``raw`` pixels, or encoded (``jpeg`` at ``quality``;
    ``webp`` lossless without one, lossy at it; ``png`` lossless)."""

    format: str = "raw"
    quality: int | None = None

    def __post_init__(self):
        if self.format not in FORMATS:
            raise FoldstackError(f"cache format {self.format!r}: one of {', '.join(FORMATS)}")
        if self.format == "jpeg" and self.quality is None:
            object.__setattr__(self, "quality", JPEG_QUALITY)

    @property
    def name(self) -> str:
        """``raw``, ``jpeg90``, ``png``, ``webp`` (lossless) or ``webp80``."""
        return self.format + (str(self.quality) if self.quality is not None else "")

    @property
    def lossless(self) -> bool:
        return self.format in ("raw", "png") or (self.format == "webp" and self.quality is None)

    def encode(self, image: np.ndarray) -> bytes:
        if self.format == "jpeg":
            import simplejpeg

            return simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=self.quality, colorspace="RGB")
        import cv2

        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        if self.format == "png":
            ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
        else:  # webp: quality above 100 is lossless
            ok, data = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, self.quality or 101])
        if not ok:
            raise FoldstackError(f"OpenCV cannot encode {self.format}")
        return data.tobytes()

    def decode(self, data: np.ndarray) -> np.ndarray:
        if self.format == "jpeg":
            import simplejpeg

            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        import cv2

        return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


#: What the disk budget suggests instead: the first of these that fits.
ALTERNATIVES = (CacheFormat("jpeg"), CacheFormat("webp", 90), CacheFormat("webp"), CacheFormat("png"))


def cache_file(root: Path, split: str, size: Size, fmt: CacheFormat = CacheFormat()) -> Path:
    """Where a split's cache at ``size`` in ``fmt`` lives: ``<root>/<size>[-<format>]/<split>``,
    ``.npy`` for raw, ``.pack`` for an encoded format; a size is ``512`` or ``384x512``."""
    folder = size_name(size) + ("" if fmt.format == "raw" else f"-{fmt.name}")
    return root / folder / f"{split}.{'npy' if fmt.format == 'raw' else 'pack'}"


def model_format(cache: CacheConfig | None) -> CacheFormat:
    """A model's cache format (its ``cache``, filled in from the pipeline's; None: raw)."""
    return CacheFormat() if cache is None else CacheFormat(cache.format, cache.quality)


def model_cache(root: Path, split: str, files: list[str], ids: list[str], model: ModelConfig,
                size: Size | None = None, *, read: ImageReader) -> Path:
    """The split's cache for ``model`` (at ``size``; None: the size it caches at), built if
    needed: the path the stages hand a fold's process, which opens it with :func:`open_images`.
    ``read``: how each file becomes an image (``ImageReader.of(cfg.data)``)."""
    size = model.cached_size if size is None else size
    fmt = model_format(model.cache)
    path = cache_file(root, split, size, fmt)
    cached_images(files, ids, size, path, desc=split, fmt=fmt, read=read)
    return path


def size_name(size: Size) -> str:
    h, w = hw(size)
    return str(h) if h == w else f"{h}x{w}"


def free_bytes(folder: Path) -> int:
    """Bytes free on ``folder``'s disk (the one figure :func:`check_room` asks of the system)."""
    return shutil.disk_usage(folder).free


def check_room(folder: Path, needed: int, fmt: CacheFormat = CacheFormat(),
               others: Callable[[], dict[CacheFormat, int]] | None = None) -> None:
    """Stop before writing ``needed`` bytes into ``folder`` if its disk has not that much free
    (a Kaggle kernel's working disk keeps 20 GB: one raw 512 px cache of 15k images is 12 GB).

    Args:
        others: estimates of the other formats' bytes, asked only when ``needed`` does not fit,
            to suggest the smallest one that does.

    Raises:
        FoldstackError: naming the bytes needed, the bytes free, the folder, and a format that fits.
    """
    folder.mkdir(parents=True, exist_ok=True)
    free = free_bytes(folder)
    if free >= needed:
        return
    fits = [(f, n) for f, n in (others() if others else {}).items() if f != fmt and f.format != "raw" and n <= free]
    hint = ""
    if fits:  # the first that fits, in ALTERNATIVES' order (JPEG decodes fastest)
        best, bytes_ = fits[0]
        quality = f", quality: {best.quality}" if best.quality else ""
        hint = f"cache: {{format: {best.format}{quality}}} would need ~{_human(bytes_)}; or "
    raise FoldstackError(f"{folder}: the image cache ({fmt.name}) needs {needed} bytes ({_human(needed)}), "
                         f"{free} bytes ({_human(free)}) are free; {hint}free some space, or move "
                         "scratch with FOLDSTACK_SCRATCH in a kernel")


def _human(n: float) -> str:
    for unit, power in (("GiB", 30), ("MiB", 20)):
        if n >= 2**power:
            return f"{n / 2**power:.1f} {unit}"
    return f"{n / 2**10:.1f} KiB"


def estimates(sample: list[np.ndarray], n: int) -> dict[CacheFormat, int]:
    """Every format's bytes for ``n`` images like ``sample`` (resized): raw's exactly, an encoded
    format's from the sample's mean, with :data:`MARGIN`."""
    h, w = sample[0].shape[:2]
    out = {CacheFormat(): n * h * w * 3 + HEADER_BYTES}
    for fmt in ALTERNATIVES:
        mean = sum(len(fmt.encode(image)) for image in sample) / len(sample)
        out[fmt] = int(mean * n * MARGIN) + _index_bytes(n)
    return out


def cached_images(files: list[str], ids: list[str], size: Size, cache_file: Path, desc: str = "decode",
                  fmt: CacheFormat = CacheFormat(), read: ImageReader = ImageReader()) -> np.ndarray | EncodedImages:
    """The cache of ``files`` at ``size`` in ``fmt``, built once: a read-only ``(N, H, W, C)``
    uint8 memory map (raw) or :class:`EncodedImages` (C = 3); each file read by ``read`` (image
    files as RGB by default; array images have ``read.channels``).

    The cache is keyed by its ids (and by how array images are read, ``read.key``): if they
    differ (a new split, a new dataset, another scale), it is rebuilt.
    Built under a temporary name, so an interrupted build is never read (its leftovers go when
    the next build starts). Raw: the old ids file goes before the new images take the cache's
    name and the new one comes after, so a kill in between leaves a cache without ids (rebuilt
    next time), never new images under old ids. A pack holds its ids' digest in its header.
    """
    wanted = read.key + "\n".join(ids) + "\n"
    if fmt.format != "raw":
        if read.channels != 3:
            raise FoldstackError(f"{cache_file}: cache format {fmt.name} holds RGB images, not {read.channels} channels")
        return _cached_pack(files, _digest(wanted), size, cache_file, desc, fmt, read)
    ids_file = cache_file.with_suffix(".ids")
    if cache_file.exists() and has_key(ids_file, wanted):
        return np.load(cache_file, mmap_mode="r")
    h, w = hw(size)
    _clear_leftovers(cache_file)
    channels = read.channels
    check_room(cache_file.parent, len(files) * h * w * channels + HEADER_BYTES, fmt,
               (lambda: estimates(_resized(files[:SAMPLE], size, read), len(files))) if channels == 3 else None)
    with atomic_path(cache_file) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), h, w, channels))
        images = _resized_each(tqdm(files, desc=f"{desc} {size_name(size)}px", unit="img", leave=False), size, read)
        for i, image in enumerate(images):
            array[i] = image.reshape(h, w, channels)
        array.flush()
        del array
        ids_file.unlink(missing_ok=True)  # just before the rename, so a failed build keeps the old pair
    write_text(ids_file, wanted)
    log.info("cached %d images at %spx -> %s", len(files), size_name(size), cache_file)
    return np.load(cache_file, mmap_mode="r")


def open_images(path: Path) -> np.ndarray | EncodedImages:
    """A cache :func:`cached_images` built, read-only: the one way a reader opens one."""
    path = Path(path)
    if path.suffix == ".pack":
        return EncodedImages(path)
    return np.load(path, mmap_mode="r")


class EncodedImages:
    """A pack file read as a ``(N, H, W, 3)`` uint8 array: ``images[rows]`` decodes those rows.

    Layout: :data:`MAGIC`, the header's length (uint64), the header (JSON: ``format``,
    ``quality``, ``shape``, ``key``: the ids' digest, ``encoder``), ``N + 1`` uint64 offsets from
    the file's start, then the encoded images back to back.

    Each image's bytes are read with ``os.pread`` (one call, any thread), not through a memory
    map: a map's pages count in the process's resident memory once read, so an epoch over a pack
    would grow the train stage's RSS by the pack's size; read, they stay in the kernel's page
    cache. Pickled, it is its path: the other process opens the file itself.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.header = read_header(self.path)
        self.format = CacheFormat(self.header["format"], self.header["quality"])
        self.shape = tuple(self.header["shape"])
        self.dtype = np.dtype(np.uint8)
        self.ndim = 4
        self._fd = os.open(self.path, os.O_RDONLY)
        size = _index_bytes(self.shape[0])
        self._offsets = np.frombuffer(os.pread(self._fd, size, self.header["index"]), dtype="<u8")
        if len(self._offsets) != self.shape[0] + 1:
            raise DataError(f"{self.path}: cut short (its index ends early); delete it to rebuild")

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def __reduce__(self):
        return EncodedImages, (self.path,)

    def __len__(self) -> int:
        return self.shape[0]

    def nbytes_on_disk(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, (int, np.integer)):
            return self._decode(int(rows))
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows)
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        for i, row in enumerate(rows):
            out[i] = self._decode(int(row))
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self[np.arange(len(self))]
        return array if dtype is None else array.astype(dtype)

    def _decode(self, row: int) -> np.ndarray:
        if row < 0:
            row += len(self)
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        return self.format.decode(np.frombuffer(os.pread(self._fd, end - start, start), dtype=np.uint8))


def read_header(path: Path) -> dict:
    """A pack's header; DataError naming the file when it is not one."""
    with open(path, "rb") as file:
        start = file.read(len(MAGIC) + 8)
        if len(start) < len(MAGIC) + 8 or start[:len(MAGIC)] != MAGIC:
            raise DataError(f"{path}: not an image cache pack; delete it to rebuild")
        length = int(np.frombuffer(start[len(MAGIC):], dtype="<u8")[0])
        return json.loads(file.read(length))


def _cached_pack(files: list[str], key: str, size: Size, path: Path, desc: str, fmt: CacheFormat,
                 read: ImageReader) -> EncodedImages:
    if path.exists():
        header = read_header(path)
        if header.get("key") == key and header.get("format") == fmt.format and header.get("quality") == fmt.quality:
            return EncodedImages(path)
    _clear_leftovers(path)
    h, w = hw(size)
    n = len(files)
    header = {"format": fmt.format, "quality": fmt.quality, "shape": [n, h, w, 3], "key": key,
              "encoder": "simplejpeg" if fmt.format == "jpeg" else "opencv"}
    index_at = len(MAGIC) + 8 + 4096  # the header's room: index right after it
    header["index"] = index_at
    encoded = json.dumps(header).encode()
    assert len(encoded) <= 4096, "a pack header fits its room"
    offsets = np.zeros(n + 1, dtype="<u8")
    offsets[0] = index_at + _index_bytes(n)
    with atomic_path(path) as tmp, open(tmp, "r+b") as file:
        file.write(MAGIC + np.uint64(len(encoded)).astype("<u8").tobytes() + encoded)
        file.seek(int(offsets[0]))
        pending: list[bytes] = []
        sample: list[np.ndarray] = []
        images = tqdm(files, desc=f"{desc} {size_name(size)}px {fmt.name}", unit="img", leave=False)
        for i, (image, data) in enumerate(_in_threads(lambda file: _encoded(file, size, read, fmt), images)):
            offsets[i + 1] = offsets[i] + len(data)
            if len(sample) < SAMPLE:  # held until the disk is checked on the sample's sizes
                sample.append(image)
                pending.append(data)
                if len(sample) == min(SAMPLE, n):
                    mean = (offsets[i + 1] - offsets[0]) / len(sample)
                    check_room(path.parent, int(offsets[0] + mean * n * MARGIN), fmt, lambda: estimates(sample, n))
                    file.write(b"".join(pending))
                    pending = []
                continue
            file.write(data)
        file.seek(index_at)
        file.write(offsets.tobytes())
    log.info("cached %d images at %spx as %s (%d bytes) -> %s", n, size_name(size), fmt.name, offsets[-1], path)
    return EncodedImages(path)


def _resized_each(files: Iterable[str], size: Size, read: ImageReader) -> Iterable[np.ndarray]:
    return _in_threads(lambda file: resize(read(file), size), files)


def _encoded(file: str, size: Size, read: ImageReader, fmt: CacheFormat) -> tuple[np.ndarray, bytes]:
    image = resize(read(file), size)
    return image, fmt.encode(image)


Item = TypeVar("Item")
Result = TypeVar("Result")


def _in_threads(work: Callable[[Item], Result], items: Iterable[Item]) -> Iterable[Result]:
    """``work(item)`` for every item, in their order, on :data:`BUILD_THREADS` threads,
    :data:`CHUNK` items at a time (a failure is raised when its item's turn comes)."""
    if BUILD_THREADS == 1:
        yield from map(work, items)
        return
    items = iter(items)
    with ThreadPoolExecutor(BUILD_THREADS, thread_name_prefix="cache-build") as pool:
        while chunk := list(islice(items, CHUNK)):
            yield from pool.map(work, chunk)


def _resized(files: list[str], size: Size, read: ImageReader) -> list[np.ndarray]:
    return list(_resized_each(files, size, read))


def _index_bytes(n: int) -> int:
    return (n + 1) * 8


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _clear_leftovers(path: Path) -> None:
    """A killed build's temporary file (``atomic_path``'s name for ``path``): its bytes would
    count against the disk the new build needs."""
    for leftover in path.parent.glob(f".{path.name}.*.tmp") if path.parent.is_dir() else []:
        leftover.unlink(missing_ok=True)
