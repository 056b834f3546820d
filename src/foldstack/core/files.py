"""Atomic writes: a file or a folder appears complete under its name, or not at all.

Temporary names are created with the mode a plain ``open`` would give (``0o666`` or ``0o777``
less the umask, applied by the kernel); the umask is never read by setting it, because
``os.umask`` changes it for the whole process, loader threads included.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from foldstack.core.errors import DiskFullError, is_disk_full


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file sits in the same folder so the final ``os.replace`` is atomic; an
    interrupted write leaves at most a temporary file that no stage reads. ``suffix`` is for
    writers that insist on an ending (Keras wants ``.weights.h5``).

    Raises:
        DiskFullError: the disk or quota filled up; ``path`` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _temporary_name(path, suffix)
    os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as error:
        # Name the file the user knows, not the temporary one the writer was filling.
        if is_disk_full(error):
            raise DiskFullError(path) from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds.

    An existing ``path`` is swapped with the new folder in one step (Linux's ``renameat2`` with
    ``RENAME_EXCHANGE``), so at every moment ``path`` is the old complete folder or the new one.
    Where the system cannot exchange, the old folder is moved aside and put back if the new one
    cannot take its place: a failure never loses both.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path, ".tmp")
    os.mkdir(tmp, 0o777)
    try:
        yield tmp
        if not path.exists():
            os.replace(tmp, path)
        elif not _exchange(tmp, path):  # now `tmp` holds the old folder, deleted below
            _swap_by_renames(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _temporary_name(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{suffix}")


def _swap_by_renames(new: Path, path: Path) -> None:
    old = _temporary_name(path, ".old")
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if ctypes.util.find_library("c") else None
_RENAMEAT2 = getattr(_LIBC, "renameat2", None)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the C library or the file system cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def has_key(key_file: Path, key: str) -> bool:
    """Whether ``key_file`` says the files it vouches for were made by ``key``."""
    return key_file.is_file() and key_file.read_text(encoding="utf-8") == key


@contextmanager
def rekeyed(key_file: Path, key: str) -> Iterator[None]:
    """Around the writes of files that ``key_file`` vouches for: the old key goes first and the
    new one is written last, so a kill in between leaves files that count as stale, never new
    files under an old key or old ones under a new key."""
    key_file.unlink(missing_ok=True)
    yield
    write_text(key_file, key)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_parquet(path: str | Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
