"""The resized image cache that training reads.

Every image is decoded, converted to RGB and resized once per image size into a uint8 array on
disk (``cache/<size>/<split>.npy``), which training memory-maps: epochs never decode a file.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from foldstack.core.errors import FoldstackError
from foldstack.core.files import atomic_path, has_key, write_text
from foldstack.data.images import load_rgb, resize

log = logging.getLogger(__name__)


#: Room for a ``.npy`` header and the ids file beside the pixels, at most.
HEADER_BYTES = 1 << 20


def check_room(folder: Path, needed: int) -> None:
    """Stop before writing ``needed`` bytes into ``folder`` if its disk has not that much free
    (a Kaggle kernel's working disk keeps 20 GB: one 512 px cache of 15k images is 12 GB).

    Raises:
        FoldstackError: naming the bytes needed, the bytes free and the folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise FoldstackError(f"{folder}: the image cache needs {needed} bytes ({needed / 2**30:.1f} GiB), "
                             f"{free} bytes ({free / 2**30:.1f} GiB) are free; free some space, or move "
                             "scratch with FOLDSTACK_SCRATCH in a kernel")


def cached_images(files: list[str], ids: list[str], size: int, cache_file: Path,
                  desc: str = "decode") -> np.ndarray:
    """A read-only memory map ``(N, size, size, 3)`` uint8 of ``files``, built once.

    The cache is keyed by its ids file: if the ids differ (a new split, a new dataset), it is
    rebuilt. Built under a temporary name, so an interrupted build is never read. The old ids
    file goes before the new images take the cache's name and the new one comes after, so a
    kill in between leaves a cache without ids (rebuilt next time), never new images under old
    ids.
    """
    ids_file = cache_file.with_suffix(".ids")
    wanted = "\n".join(ids) + "\n"
    if cache_file.exists() and has_key(ids_file, wanted):
        return np.load(cache_file, mmap_mode="r")
    check_room(cache_file.parent, len(files) * size * size * 3 + HEADER_BYTES)
    with atomic_path(cache_file) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(files), size, size, 3))
        for i, path in enumerate(tqdm(files, desc=f"{desc} {size}px", unit="img", leave=False)):
            array[i] = resize(load_rgb(path), size)
        array.flush()
        del array
        ids_file.unlink(missing_ok=True)  # just before the rename, so a failed build keeps the old pair
    write_text(ids_file, wanted)
    log.info("cached %d images at %dpx -> %s", len(files), size, cache_file)
    return np.load(cache_file, mmap_mode="r")
