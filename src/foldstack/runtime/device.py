"""What the accelerator allows: the one place that asks the backend about hardware.

Model code stays in ``keras``; only this module knows how each backend lists its GPUs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import keras

from foldstack.core.paths import user_cache

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
    slower per step (benchmarks/RESULTS.md); TensorFlow's graph mode needs no XLA there. Under
    JAX what XLA compiles is kept on disk (:func:`keep_compiled`).
    """
    if keras.config.backend() == "jax":
        keep_compiled()
    gpus = gpu_count()
    compile_ = "auto" if gpus or keras.config.backend() == "jax" else False
    settings = DeviceSettings(gpus=gpus, mixed_precision=gpus > 0, jit_compile=compile_)
    keras.mixed_precision.set_global_policy("mixed_float16" if settings.mixed_precision else "float32")
    log.debug("backend %s, %d GPU(s), mixed precision %s", keras.config.backend(), gpus,
              "on" if settings.mixed_precision else "off")
    return settings


#: The folder JAX keeps compiled programs in, where the user names one.
JAX_CACHE_VARIABLE = "JAX_COMPILATION_CACHE_DIR"


def keep_compiled() -> None:
    """JAX's persistent compilation cache on: every fold of a model compiles the same training
    and prediction steps, each fold in a process of its own, so the folds after the first load
    them instead of compiling again (the device waits through every compile). In
    ``$JAX_COMPILATION_CACHE_DIR`` where set, else in ``user_cache("xla")``; JAX keys each
    program by the computation, the devices and its own version, so pipelines share it safely.
    Every program is kept, however quickly it compiled (JAX keeps those of a second or more by
    default): a fold process compiles dozens of small ones (each weight's initializer), seconds
    in all. Call before the process compiles anything."""
    import jax

    if not os.environ.get(JAX_CACHE_VARIABLE):
        jax.config.update("jax_compilation_cache_dir", str(user_cache("xla")))
    if not os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
