"""The input pipeline: numpy batches from the memory-mapped cache, augmented by albumentations,
or gathered as cached where the device augments them (``training.device_augment``).

Backend-neutral: a ``keras.utils.PyDataset``, so the same code feeds TensorFlow, JAX and PyTorch.
Augmentation runs in Keras's worker threads (``workers``); albumentations releases the GIL in
its OpenCV calls, so threads scale without copying the cache into processes.
"""

from __future__ import annotations

import copy
import math
import threading
from typing import Callable

import albumentations as A
import keras
import numpy as np

from foldstack.core.config import AugmentConfig, ModelConfig
from foldstack.runtime.distribute import batch_multiple
from foldstack.runtime.memory import keep_freed_memory
from foldstack.training.augment import compose, crop
from foldstack.training.sampling import Sampler

Mix = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray | dict[str, np.ndarray], np.ndarray]]
"""``mix(images, targets, rng) -> (inputs, targets)``: a whole batch mixed (MixUp, CutMix); the
inputs are the mixed images, or (mixed on the device) the images as given with the draws beside
them, a dict of the training network's inputs."""

#: Tells the batch-mixing generator's seed from the augmentation's, drawn from the same three numbers.
_MIX = 1


class ImageBatches(keras.utils.PyDataset):
    """Batches of ``(images, targets)`` from rows ``index`` of a uint8 image array.

    Images stay uint8 (0-255) unless a transform makes them float: the model's float32 input
    casts them on its device, so a batch costs a quarter of the bytes to build and to copy to a
    GPU.

    Args:
        images: ``(N, H, W, 3)`` uint8, usually a read-only memory map.
        index: which rows to serve, in this order (shuffled each epoch when ``shuffle``).
        targets: per-row targets (class indices or a 0/1 matrix), or None for prediction.
        transform: an albumentations Compose applied to each image, or None.
        batch_size: images per batch.
        shuffle: reshuffle ``index`` at the end of every epoch (seeded, so runs repeat).
        seed: the shuffle and augmentation seed. Each batch's augmentation is seeded by
            ``(seed, epoch, batch)`` in a transform of its thread's own, so a run repeats
            exactly however the worker threads interleave.
        workers: threads that build batches in parallel (Keras's ``PyDataset`` workers).
        mix: mixes a whole batch of augmented images and their targets
            (``training.batch_mix.BatchMix``), given a generator seeded by ``(seed, epoch, batch)``;
            training batches only. Where the device mixes the pixels, it leaves the images as
            they are and puts the draws beside them (a batch's inputs are then a dict).
        sampler: draws each epoch's rows (``training.sampling.Sampler``: balanced classes, a
            new draw every epoch) in place of shuffling ``index``; training batches only.
        meta: the rows' encoded table columns (``training.meta``), row for row with ``images``,
            or None; with them a batch's inputs are ``{"image": ..., "meta": ...}``.
        multiple: every batch's row count is a multiple of it (None: what the distribution now
            set needs, ``distribute.batch_multiple``): a training batch drops its remainder
            (another one each epoch, the order being shuffled), a prediction batch (no
            ``targets``) repeats its last row; :func:`predict` trims those rows' outputs.
    """

    def __init__(self, images: np.ndarray, index: np.ndarray, targets: np.ndarray | None = None,
                 transform: A.Compose | None = None, batch_size: int = 32, shuffle: bool = False,
                 seed: int = 0, workers: int = 1, mix: Mix | None = None, multiple: int | None = None,
                 sampler: Sampler | None = None, meta: np.ndarray | None = None, **kwargs):
        super().__init__(workers=workers, use_multiprocessing=False, **kwargs)
        self.images = images
        self.index = np.asarray(index)
        self.targets = targets
        self.transform = transform
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.mix = mix
        self.multiple = batch_multiple() if multiple is None else multiple
        self._epoch = 0
        self._rng = np.random.default_rng(seed)
        self.sampler = sampler
        self.meta = meta
        self._order = self._next_order()
        self._local = threading.local()  # each worker thread's own copy of the transform

    def __len__(self) -> int:
        batches = math.ceil(len(self._order) / self.batch_size)
        if self.targets is not None and batches and len(self._rows(batches - 1)) == 0:
            return batches - 1  # a training remainder smaller than ``multiple``: dropped
        return batches

    def _rows(self, batch: int) -> np.ndarray:
        """The batch's rows: a training batch's cut, a prediction batch's padded, to ``multiple``."""
        rows = self._order[batch * self.batch_size:(batch + 1) * self.batch_size]
        extra = len(rows) % self.multiple
        if not extra:
            return rows
        if self.targets is not None:
            return rows[:len(rows) - extra]
        return np.concatenate([rows, np.repeat(rows[-1:], self.multiple - extra)])

    def __getitem__(self, batch: int):
        keep_freed_memory()  # undoes TensorFlow's malloc trim patch; see its docstring
        rows = self._rows(batch)
        images = np.asarray(self.images[rows])
        if self.transform is not None:
            transform = self._thread_transform()
            seed = np.random.SeedSequence([self.seed, self._epoch, batch]).generate_state(1)[0]
            transform.set_random_seed(int(seed))
            images = np.stack([transform(image=image)["image"] for image in images])
        if self.meta is not None:  # the config refuses MixUp and CutMix with meta: no mix below
            images = {"image": images, "meta": np.asarray(self.meta[rows])}
        if self.targets is None:
            return (images,)
        targets = self.targets[rows]
        if self.mix is not None:
            images, targets = self.mix(images, targets, np.random.default_rng([self.seed, self._epoch, batch, _MIX]))
        return images, targets

    def on_epoch_end(self) -> None:
        self._epoch += 1
        if self.shuffle or self.sampler is not None:
            self._order = self._next_order()

    def _next_order(self) -> np.ndarray:
        if self.sampler is not None:
            return self.sampler.draw(self._rng)
        return self._rng.permutation(self.index) if self.shuffle else self.index

    def _thread_transform(self) -> A.Compose:
        if not hasattr(self._local, "transform"):
            self._local.transform = copy.deepcopy(self.transform)
        return self._local.transform


def view_batches(images: np.ndarray, index: np.ndarray, augment: AugmentConfig, view: list[dict],
                 batch_size: int, workers: int = 1, model: ModelConfig | None = None,
                 meta: np.ndarray | None = None) -> ImageBatches:
    """Unshuffled batches of one TTA view: the model's centre crop (``cache_size``), the valid
    transforms, then the view's own; ``meta``: the images' encoded table columns, row for row."""
    centre = crop(model, train=False) if model is not None else []
    return ImageBatches(images, index, transform=compose([*centre, *augment.valid, *view]),
                        batch_size=batch_size, workers=workers, meta=meta)


def predict(network: keras.Model, inputs: ImageBatches | np.ndarray, batch_size: int = 32) -> np.ndarray:
    """``network.predict`` of every row of ``inputs`` (batches, or an array such as pooled
    features), one output row per input row: batches padded to the distribution's
    ``multiple`` (:class:`ImageBatches`) have the padding's outputs trimmed, and an array is
    padded (its last row repeated) and cut into batches of a multiple of it."""
    if isinstance(inputs, ImageBatches):
        return network.predict(inputs, verbose=0)[:len(inputs.index)]
    multiple = batch_multiple()
    extra = len(inputs) % multiple
    padded = inputs if not extra else np.concatenate([inputs, np.repeat(inputs[-1:], multiple - extra, axis=0)])
    return network.predict(padded, batch_size=math.ceil(batch_size / multiple) * multiple, verbose=0)[:len(inputs)]
