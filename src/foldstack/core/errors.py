"""Errors meant for a person: the CLI prints the message as one line and exits non-zero,
without a traceback. Anything else that escapes is a bug and keeps its traceback."""

from __future__ import annotations

import errno
from pathlib import Path

#: ``OSError.errno`` values that mean "no room left": the disk, or the user's quota, is full.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class FoldstackError(Exception):
    """Bad input or a failed precondition; the message names the file, row or key."""

    exit_code = 2


class DataError(FoldstackError):
    """The competition's files are missing or malformed."""


class DiskFullError(FoldstackError):
    """A write failed because the disk (or quota) is full; the message names the file."""

    def __init__(self, path: str | Path | None):
        where = f"{path}: " if path else ""
        super().__init__(f"{where}cannot write: the disk is full (no space left on device); "
                         "free some space and run it again")


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines too) as one space: a message fit for one line."""
    return " ".join(text.split())


def shorten(items, limit: int = 10) -> str:
    """At most ``limit`` items joined by commas, then how many more there are."""
    items = list(items)
    more = f" ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(map(str, items[:limit])) + more


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is an OSError saying the disk or the quota is full."""
    return isinstance(error, OSError) and error.errno in DISK_FULL
