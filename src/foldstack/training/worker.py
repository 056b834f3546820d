"""The Keras side of the train and predict stages, run in a process of its own per call
(:func:`foldstack.runtime.isolate.call`).

The parent (``stages.train``, ``stages.predict``) decides what to train or predict and writes
the results; the functions here build the model, fit it or load its weights, and predict, then
return plain arrays. Each ends with its process, so the memory its model took goes back to the
operating system before the next call starts.
"""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from foldstack.core import metrics
from foldstack.core.config import AugmentConfig, ModelConfig
from foldstack.data.cache import open_images
from foldstack.runtime import device, distribute
from foldstack.runtime.executor import SLOT
from foldstack.runtime.memory import memory_mb
from foldstack.training.averaging import averaged_epochs
from foldstack.training.batch_mix import mixes
from foldstack.training.callbacks import EpochTicks, FirstEpoch
from foldstack.training.device_forms import augment_on_device
from foldstack.training.features import FeatureCache, extract
from foldstack.training.fold_task import BEST, FoldTask, PredictTask
from foldstack.training.gradcam import explain
from foldstack.training.loader import predict, view_batches
from foldstack.training.meta import MetaRows, fold_inputs
from foldstack.training.network import POOLED
from foldstack.training.regimes import features_tta, fit, input_width, trained_network, tta_predictor

Send = Callable[[object], None]


def build_features(model: ModelConfig, caches: dict[str, Path], augment: AugmentConfig, folder: Path,
                   keys: dict[str, str], workers: int, send: Send) -> None:
    """The ``features`` regime's pooled backbone features of every image and view, into ``folder``."""
    device.configure(model.precision)
    FeatureCache.build(model, open_caches(caches), augment, folder, keys, workers)


def gpu_count(send: Send) -> int:
    """How many GPUs the Keras backend sees from a fold process (for the executor's slots)."""
    return device.gpu_count()


def train_fold(task: FoldTask, send: Send) -> dict:
    """Fit one fold; its OOF probabilities, the device it ran on, its peak memory and the epoch
    it resumed at (``resumed_from``: a killed run's backup or finished phases; None from the
    first epoch).

    ``send(val_score)`` after every epoch, for the parent's progress bar. Data parallel over the
    process's devices where the executor asked for it (:mod:`foldstack.runtime.distribute`).
    """
    distribute.prepare()
    settings = device.configure(task.model.precision, training=True)
    task = replace(task, augment_on_device=augment_on_device(task.model, task.augment, settings.gpus))
    images = open_caches(task.caches)
    keras.utils.set_random_seed(task.seed)
    with distribute.data_parallel(distribute.requested()) as split:
        if split.replicas > 1 and keras.config.backend() == "tensorflow" and mixes(task.model):
            # MirroredStrategy gives each replica its share of a batch, and MixUp and CutMix pair
            # images across the whole batch: mixed on a device, a partner may sit on another.
            task = replace(task, augment_on_device=False)
        first = FirstEpoch()
        predict_split = fit(task, images, metrics.get(task.metric), callbacks=[EpochTicks(send), first],
                            jit_compile=settings.jit_compile)
        oof = predict_split("train", task.valid_index)
    return {
        "oof": oof,
        "device": {"backend": keras.config.backend(), "gpus": settings.gpus,
                   "mixed_precision": settings.mixed_precision, "precision": settings.precision, "augment_on_device": task.augment_on_device,
                   "replicas": split.replicas, "split_over": list(split.devices),
                   "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                   "slot": os.environ.get(SLOT), "host": socket.gethostname(), "pid": os.getpid()},
        "peak_mb": memory_mb("VmHWM"),
        # No epoch trained: every phase had finished before a kill.
        "resumed_from": (task.model.epochs if first.epoch is None else first.epoch) or None,
        "averaged": averaged_epochs(task.fold_dir / BEST),
    }


def explain_images(task: FoldTask, images: np.ndarray, class_index: np.ndarray | int | None,
                   meta: MetaRows | None = None, *, send: Send) -> dict[str, np.ndarray]:
    """Grad-CAM of raw uint8 ``images`` by the fold ``task`` names (its ``best.weights.h5``):
    ``heatmaps`` ``(n, size, size)`` in [0, 1], the ``classes`` they explain (the predicted one
    where ``class_index`` is None) and the probabilities ``proba``. ``meta``: the images' table
    columns, row for row, for a model that reads them."""
    result = explain(task, images, class_index, meta)
    return {"heatmaps": result.heatmaps, "classes": result.classes, "proba": result.proba}


def predict_folds(task: PredictTask, send: Send) -> list[np.ndarray]:
    """Each fold's probabilities of the task's images, averaged over the TTA views, in the order
    of ``task.fold_dirs``; ``send(None)`` after each fold."""
    device.configure(task.model.precision)
    images = open_images(task.images)
    features = _features(task, images)
    index = np.arange(len(images))
    n_features = None if features is None else features[0].shape[1]
    folds, network, network_width = [], None, None
    for fold_dir in task.fold_dirs:
        # The folds share one network (and its traced predict function) while their input widths agree.
        fold_width = input_width(task, fold_dir, n_features)
        if network is not None and fold_width != network_width:
            keras.backend.clear_session()  # the next fold's network replaces this one
            network = None
        network, network_width = trained_network(task, fold_dir, n_features, built=network), fold_width
        if features is None:
            meta = fold_inputs(task.model.meta, task.meta, fold_dir)
            predictor = tta_predictor(task, network, {task.split: images}, None if meta is None else {task.split: meta})
            folds.append(predictor(task.split, index))
        else:
            folds.append(features_tta(network, features))
        send(None)
    return folds


def embed(task: PredictTask, send: Send) -> np.ndarray:
    """What the first fold's head sees of each image (its first TTA view): the pooled features
    ``(n_images, n_features)`` that tell images like the training ones from the others."""
    device.configure(task.model.precision)
    images = open_images(task.images)
    features = _features(task, images)
    if features is not None:
        return features[0]
    network = trained_network(task, task.fold_dirs[0])
    # The image input alone: the pooled features come before the table columns join (meta).
    embedder = keras.Model(network.get_layer("image").output, network.get_layer(POOLED).output)
    batches = view_batches(images, np.arange(len(images)), task.augment, task.augment.tta[0], task.model.batch_size,
                           task.workers, task.model)
    return predict(embedder, batches).astype(np.float32)


def _features(task: PredictTask, images: np.ndarray) -> list[np.ndarray] | None:
    """The ``features`` regime's backbone features of ``images`` per TTA view (cached when the
    task names a folder); None for the image regimes, which take the images themselves."""
    if task.model.regime != "features":
        return None
    if task.features is None:
        views = extract(task.model, images, task.augment, task.workers)
    else:
        FeatureCache.build(task.model, {task.split: images}, task.augment, task.features,
                           {task.split: task.features_key}, task.workers)
        views = FeatureCache.load(task.features, [task.split], len(task.augment.tta)).views(task.split)
    keras.backend.clear_session()
    return views


def open_caches(caches: dict[str, Path]) -> dict[str, np.ndarray]:
    """The uint8 image caches the parent built, memory-mapped read-only."""
    return {split: open_images(path) for split, path in caches.items()}
