"""Data parallel inside one fold (``compute.data_parallel``): each batch split over the fold
process's devices, through the backend's own distribution. The one module that knows how:
``keras.distribution.DataParallel`` under JAX, ``tf.distribute.MirroredStrategy`` under
TensorFlow (Keras 3 has no neutral form of it for TensorFlow).

The executor (:mod:`foldstack.runtime.executor`) says so in the fold process's environment, with
its devices: its GPUs (``CUDA_VISIBLE_DEVICES``), or without a GPU as many virtual CPU devices
(``XLA_FLAGS`` for JAX; logical devices for TensorFlow, made by :func:`prepare`), which is how
the CPU tests split a fold in two.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import keras

from foldstack.core.config import ConfigError
from foldstack.runtime.executor import CPU_DEVICES, DATA_PARALLEL

log = logging.getLogger(__name__)


def requested() -> bool:
    """Whether this fold process was started to train data parallel."""
    return os.environ.get(DATA_PARALLEL) == "1"


def prepare() -> None:
    """Before the backend starts: TensorFlow's CPU split into the virtual devices asked for.
    (JAX reads its count from ``XLA_FLAGS``, which the executor sets.)"""
    count = int(os.environ.get(CPU_DEVICES, "0"))
    if count > 1 and keras.config.backend() == "tensorflow":
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def batch_multiple() -> int:
    """What every batch's row count must be a multiple of, under the distribution now set: the
    device count under JAX's ``DataParallel``, which shards each batch evenly and fails on one
    that does not divide (keras-team/keras#21167); 1 otherwise (TensorFlow's MirroredStrategy
    splits an uneven batch itself)."""
    if keras.config.backend() != "jax":
        return 1
    distribution = keras.distribution.distribution()
    if not isinstance(distribution, keras.distribution.DataParallel):
        return 1
    return int(distribution.device_mesh.devices.size)


@dataclass(frozen=True)
class Split:
    """How a fold's batches are split, as the backend's distribution reports it (``done.json``).

    Attributes:
        replicas: how many copies of the model each take a share of a batch (1: not split).
        devices: the devices the distribution places them on (JAX's device mesh, the strategy's
            devices under TensorFlow); empty when not split.
    """

    replicas: int = 1
    devices: tuple[str, ...] = ()


@contextmanager
def data_parallel(enabled: bool) -> Iterator[Split]:
    """Inside, a model built, compiled and fitted splits each batch over every device of the
    process (one device: nothing changes); yields the :class:`Split`.

    Raises:
        ConfigError: the backend has no data parallel that foldstack drives (torch).
    """
    if not enabled:
        yield Split()
        return
    backend = keras.config.backend()
    if backend == "jax":
        previous = keras.distribution.distribution()
        distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices())
        keras.distribution.set_distribution(distribution)
        # The mesh the batches are sharded over, not the list asked for: what really happens.
        devices = tuple(str(device) for device in distribution.device_mesh.devices.flatten())
        log.info("data parallel over %d device(s): %s", len(devices), ", ".join(devices))
        try:
            yield Split(len(devices), devices)
        finally:
            keras.distribution.set_distribution(previous)
    elif backend == "tensorflow":
        import tensorflow as tf

        logical = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        strategy = tf.distribute.MirroredStrategy([device.name for device in logical])
        devices = tuple(strategy.extended.worker_devices)
        log.info("data parallel over %d device(s): %s", strategy.num_replicas_in_sync, ", ".join(devices))
        with strategy.scope():
            yield Split(strategy.num_replicas_in_sync, devices)
    else:
        raise ConfigError(f"compute.data_parallel = true: not available under the {backend} backend; "
                          "use jax or tensorflow")
