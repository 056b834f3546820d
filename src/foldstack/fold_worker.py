"""The Keras side of the train stage, run in a process of its own per call (see ``isolate``).

The parent (``train``) decides what to train and writes the results; the functions here build
the model, fit it and predict, then return plain arrays. Each ends with its process, so the
memory its model took goes back to the operating system before the next fold starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import keras
import numpy as np

from foldstack import device, metrics
from foldstack.config import AugmentConfig, ModelConfig
from foldstack.fold import FoldTask
from foldstack.isolate import memory_mb
from foldstack.model import FeatureCache, FoldJob, fit_fold

Send = Callable[[object], None]


def build_features(model: ModelConfig, caches: dict[str, Path], augment: AugmentConfig, folder: Path,
                   key: str, workers: int, send: Send) -> None:
    """The ``features`` regime's pooled backbone features of every image and view, into ``folder``."""
    device.configure()
    FeatureCache.build(model, model.input_size, _open(caches), augment, folder, key, workers)


def train_fold(task: FoldTask, send: Send) -> dict:
    """Fit one fold; its OOF and test probabilities, the device it ran on and its peak memory.

    ``send(val_score)`` after every epoch, for the parent's progress bar.
    """
    settings = device.configure()
    images = _open(task.caches)
    features = None
    if task.features is not None:  # computed by build_features; this only loads them
        features = FeatureCache.build(task.model, task.size, images, task.augment, task.features,
                                      task.features_key, task.workers)
    job = FoldJob(**task.spec(), metric=metrics.get(task.metric), images=images,
                  jit_compile=settings.jit_compile, callbacks=[_EpochTicks(send)], features=features)
    keras.utils.set_random_seed(job.seed)
    predict = fit_fold(job)
    return {
        "oof": predict("train", job.valid_index),
        "test": predict("test", np.arange(len(images["test"]))),
        "device": {"backend": keras.config.backend(), "gpus": settings.gpus,
                   "mixed_precision": settings.mixed_precision},
        "peak_mb": memory_mb("VmHWM"),
    }


def _open(caches: dict[str, Path]) -> dict[str, np.ndarray]:
    """The uint8 image caches the parent built, memory-mapped read-only."""
    return {split: np.load(path, mmap_mode="r") for split, path in caches.items()}


class _EpochTicks(keras.callbacks.Callback):
    def __init__(self, send: Send):
        super().__init__()
        self.send = send

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.send((logs or {}).get("val_score"))

