"""What the accelerator allows: the one place that asks the backend about hardware.

Model code stays in ``keras``; only this module knows how each backend lists its GPUs.
"""

from __future__ import annotations

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
    """Mixed precision and XLA on a GPU; plain float32 on the CPU, where float16 is slower.

    JAX compiles on the CPU too: without ``jit`` it runs every op eagerly, hundreds of times
    slower per step (benchmarks/RESULTS.md); TensorFlow's graph mode needs no XLA there.
    """
    gpus = gpu_count()
    compile_ = "auto" if gpus or keras.config.backend() == "jax" else False
    settings = DeviceSettings(gpus=gpus, mixed_precision=gpus > 0, jit_compile=compile_)
    keras.mixed_precision.set_global_policy("mixed_float16" if settings.mixed_precision else "float32")
    log.debug("backend %s, %d GPU(s), mixed precision %s", keras.config.backend(), gpus,
              "on" if settings.mixed_precision else "off")
    return settings
