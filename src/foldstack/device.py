"""What the accelerator allows: the one place that asks the backend about hardware.

Model code stays in ``keras``; only this module knows how each backend lists its GPUs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from dataclasses import dataclass

import keras

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceSettings:
    gpus: int
    mixed_precision: bool
    jit_compile: bool | str


def gpu_count() -> int:
    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return sum(d.platform == "gpu" for d in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.device_count()
    return 0


def configure() -> DeviceSettings:
    """Mixed precision and XLA on a GPU; plain float32 on the CPU, where float16 is slower."""
    gpus = gpu_count()
    settings = DeviceSettings(gpus=gpus, mixed_precision=gpus > 0, jit_compile="auto" if gpus else False)
    keras.mixed_precision.set_global_policy("mixed_float16" if settings.mixed_precision else "float32")
    log.debug("backend %s, %d GPU(s), mixed precision %s", keras.config.backend(), gpus,
              "on" if settings.mixed_precision else "off")
    return settings


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None


def keep_freed_memory() -> None:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    TensorFlow sets ``M_TRIM_THRESHOLD`` to 128 KiB when it first iterates a generator dataset
    (what a ``PyDataset`` becomes), which also freezes the mmap threshold at 128 KiB: every
    batch-sized tensor is then mmapped, page-faulted in and unmapped at each step. On the digits
    CNN that doubled the step time (millions of page faults, a third of the CPU time in the
    kernel). Called from each batch, because the patch lands after any start-up setting; one
    call costs well under a microsecond. Does nothing without glibc (macOS, musl).
    """
    if _LIBC is not None and hasattr(_LIBC, "mallopt"):
        _LIBC.mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest mmap threshold
        _LIBC.mallopt(_M_TRIM_THRESHOLD, 256 << 20)
