"""Process memory: how much this process holds, and keeping glibc from trimming it every batch."""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path


def memory_mb(field: str = "VmRSS") -> float | None:
    """This process's resident (``VmRSS``) or peak resident (``VmHWM``) memory in MiB, from
    Linux's /proc; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None


def keep_freed_memory() -> None:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    TensorFlow sets ``M_TRIM_THRESHOLD`` to 128 KiB when it first iterates a generator dataset
    (what a ``PyDataset`` becomes), which also freezes the mmap threshold at 128 KiB: every
    batch-sized tensor is then mmapped, page-faulted in and unmapped at each step, which doubled
    the digits CNN's step time (benchmarks/RESULTS.md). Called from each batch, because the
    patch lands after any start-up setting; one call costs well under a microsecond. Does
    nothing without glibc (macOS, musl).
    """
    if _LIBC is not None and hasattr(_LIBC, "mallopt"):
        _LIBC.mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest mmap threshold
        _LIBC.mallopt(_M_TRIM_THRESHOLD, 256 << 20)
