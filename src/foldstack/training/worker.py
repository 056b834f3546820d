"""The Keras side of the train stage, run in a process of its own per call
(:func:`foldstack.runtime.isolate.call`).

The parent (``stages.train``) decides what to train and writes the results; the functions here
build the model, fit it and predict, then return plain arrays. Each ends with its process, so
the memory its model took goes back to the operating system before the next fold starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import keras
import numpy as np

from foldstack.core import metrics
from foldstack.core.config import AugmentConfig, ModelConfig
from foldstack.runtime import device
from foldstack.runtime.memory import memory_mb
from foldstack.training.callbacks import EpochTicks
from foldstack.training.features import FeatureCache
from foldstack.training.fold_task import FoldTask
from foldstack.training.gradcam import explain
from foldstack.training.regimes import fit

Send = Callable[[object], None]


def build_features(model: ModelConfig, caches: dict[str, Path], augment: AugmentConfig, folder: Path,
                   key: str, workers: int, send: Send) -> None:
    """The ``features`` regime's pooled backbone features of every image and view, into ``folder``."""
    device.configure()
    FeatureCache.build(model, open_caches(caches), augment, folder, key, workers)


def train_fold(task: FoldTask, send: Send) -> dict:
    """Fit one fold; its OOF and test probabilities, the device it ran on and its peak memory.

    ``send(val_score)`` after every epoch, for the parent's progress bar.
    """
    settings = device.configure()
    images = open_caches(task.caches)
    keras.utils.set_random_seed(task.seed)
    predict = fit(task, images, metrics.get(task.metric), callbacks=[EpochTicks(send)],
                  jit_compile=settings.jit_compile)
    return {
        "oof": predict("train", task.valid_index),
        "test": predict("test", np.arange(len(images["test"]))),
        "device": {"backend": keras.config.backend(), "gpus": settings.gpus,
                   "mixed_precision": settings.mixed_precision},
        "peak_mb": memory_mb("VmHWM"),
    }


def explain_images(task: FoldTask, images: np.ndarray, class_index: np.ndarray | int | None,
                   send: Send) -> dict[str, np.ndarray]:
    """Grad-CAM of raw uint8 ``images`` by the fold ``task`` names (its ``best.weights.h5``):
    ``heatmaps`` ``(n, size, size)`` in [0, 1], the ``classes`` they explain (the predicted one
    where ``class_index`` is None) and the probabilities ``proba``."""
    result = explain(task, images, class_index)
    return {"heatmaps": result.heatmaps, "classes": result.classes, "proba": result.proba}


def open_caches(caches: dict[str, Path]) -> dict[str, np.ndarray]:
    """The uint8 image caches the parent built, memory-mapped read-only."""
    return {split: np.load(path, mmap_mode="r") for split, path in caches.items()}
