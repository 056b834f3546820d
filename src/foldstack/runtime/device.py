"""What the accelerator allows: the one place that asks the backend about hardware.

Model code stays in ``keras``; only this module knows how each backend lists its GPUs.
"""

from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import keras

from foldstack.core.errors import FoldstackError
from foldstack.core.paths import user_cache

log = logging.getLogger(__name__)


#: The backends Keras trains on (mixed precision, gradient accumulation, rematerialisation).
TRAINING_BACKENDS = ("tensorflow", "jax", "torch")


@dataclass(frozen=True)
class DeviceSettings:
    gpus: int
    mixed_precision: bool
    jit_compile: bool | str
    precision: str = "float32"


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


def configure(precision: str | None = None, training: bool = False) -> DeviceSettings:
    """Mixed precision and XLA on a GPU; plain float32 on the CPU, where float16 is slower.

    ``precision`` (a model's): ``mixed_float16``, ``mixed_bfloat16`` or ``float32`` over that
    default. ``mixed_float16`` without a GPU is refused for ``training`` (no CPU has float16
    arithmetic: Keras would emulate it, slower than float32); a prediction runs in float32 there,
    on the same weights (mixed precision keeps them in float32).

    JAX compiles on the CPU too: without ``jit`` it runs every op eagerly, hundreds of times
    slower per step (benchmarks/RESULTS.md); TensorFlow's graph mode needs no XLA there. Under
    JAX what XLA compiles is kept on disk (:func:`keep_compiled`).

    Raises:
        FoldstackError: a precision this machine cannot train in.
    """
    if keras.config.backend() == "jax":
        keep_compiled()
    gpus = gpu_count()
    compile_ = "auto" if gpus or keras.config.backend() == "jax" else False
    policy = precision or ("mixed_float16" if gpus else "float32")
    if policy == "mixed_float16" and not gpus:
        if training:
            raise FoldstackError("precision: mixed_float16 needs a GPU (this machine has none, and the CPU has no "
                                 "float16 arithmetic); use mixed_bfloat16 or float32")
        policy = "float32"
    if policy != "float32" and keras.config.backend() not in TRAINING_BACKENDS:
        raise FoldstackError(f"precision: {policy} is not supported by Keras's {keras.config.backend()} backend")
    settings = DeviceSettings(gpus=gpus, mixed_precision=policy != "float32", jit_compile=compile_, precision=policy)
    keras.mixed_precision.set_global_policy(policy)
    log.debug("backend %s, %d GPU(s), precision %s", keras.config.backend(), gpus, policy)
    return settings


def remat_scope(remat: bool | None) -> AbstractContextManager:
    """Where a network is built with ``remat: true``: Keras's ``RematScope`` in ``activations``
    mode (every layer made in it recomputes its activation function's output in the backward
    pass instead of keeping it). Keras 3.15's ``full`` mode fails on a backbone (a nested model
    called with ``training``) under TensorFlow and JAX alike."""
    if not remat:
        return nullcontext()
    if keras.config.backend() not in TRAINING_BACKENDS:
        raise FoldstackError(f"remat: true is not supported by Keras's {keras.config.backend()} backend "
                             f"(only {', '.join(TRAINING_BACKENDS)})")
    return keras.RematScope(mode="activations")


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
