"""Augmentation on the CPU against augmentation on the device (issue #16, items 1, 2 and 5).

Three figures, each a ratio timed side by side in one process:

* the loader at the copy limit: with the transforms on the device, ``ImageBatches`` only gathers
  uint8 rows of the memory-mapped cache; one shuffled epoch of it against numpy's fancy indexing
  of the same memmap with the same rows (target >= 0.9);
* training images/s with each path: a small CNN trained one epoch on batches augmented by
  albumentations in the loader's threads, then on raw rows with the same transforms as Keras
  layers inside its training step (``training.device_augment``);
* the loader against the model: training images/s fed by the gathering loader against the same
  model fed one in-memory batch over and over (synthetic: no input cost at all), and the
  loader's time per batch against the model's step time.

and the same for MixUp and CutMix (issue #16, item 1's last part):

* the loader's CPU side per batch with the mixing in the loader (numpy draws, the blend and the
  paste of every pixel) and with the mixing on the device (the draws and the targets only, the
  rows gathered as cached), each against numpy's fancy indexing of the same rows;
* training images/s with the mixing in the loader against on the device (``DeviceMix`` in the
  training step), the same small CNN fed by gathering loaders.

On a CPU the device path's layers run on the same cores as the model, so the speed-up a GPU gives
(the CPU only gathers, the GPU augments in the step) shows only in ``benchmarks/gpu.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np

from benchmarks import Row, timed
from foldstack.core.config import CutMixConfig, MixUpConfig
from foldstack.training.augment import compose
from foldstack.training.batch_mix import BatchMix
from foldstack.training.device_augment import device_augment, loader_pixels, training_network
from foldstack.training.loader import ImageBatches

COPY_TARGET = 0.9
#: The transforms of both paths: each has a device form (``training.device_forms.DEVICE_FORMS``).
AUGMENT = [
    {"__class_fullname__": "HorizontalFlip", "p": 0.5},
    {"__class_fullname__": "Affine", "translate_percent": [-0.08, 0.08], "rotate": [-10, 10],
     "scale": [0.9, 1.1], "p": 0.8},
    {"__class_fullname__": "RandomBrightnessContrast", "brightness_limit": 0.2, "contrast_limit": 0.2, "p": 0.5},
]
CLASSES = 10
#: The mixing of both paths: one draw per batch, MixUp on half the batches, CutMix on the others.
MIX = (MixUpConfig(alpha=0.2, p=0.5), CutMixConfig(alpha=1.0, p=0.5))


def memmapped_cache(folder: Path, count: int, size: int, seed: int = 0) -> np.ndarray:
    """``count`` smooth random uint8 images at ``size`` px, saved as ``.npy`` and memory-mapped
    read-only: how the ``train`` stage's cache reaches the loader."""
    path = folder / f"augment-cache-{count}-{size}.npy"
    if not path.exists():
        rng = np.random.default_rng(seed)
        small = rng.integers(0, 256, (count, size // 8, size // 8, 3), dtype=np.uint8)
        np.save(path, np.repeat(np.repeat(small, 8, axis=1), 8, axis=2))
    return np.load(path, mmap_mode="r")


def gather_epochs(cache: np.ndarray, targets: np.ndarray, batch: int, epochs: int,
                  mix: BatchMix | None = None) -> tuple[float, float]:
    """The best of ``epochs`` shuffled epochs' seconds for the loader without transforms (with
    ``mix``, mixing its batches), and for numpy's fancy indexing of the same rows (each batch
    copied out of the memmap in both), timed in turn epoch by epoch so that the shared machine's
    load falls on both alike."""
    loader = ImageBatches(cache, np.arange(len(cache)), targets, None, batch_size=batch, shuffle=True, mix=mix)
    np.asarray(cache[:])  # the file in the page cache before either is timed

    def through_loader():
        for i in range(len(loader)):
            loader[i]

    def through_numpy(order: np.ndarray):
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            np.asarray(cache[rows]), targets[rows]

    loader_s, numpy_s = [], []
    for epoch in range(epochs):
        # Whichever goes second finds rows the first left in the CPU's caches: each goes first in turn.
        if epoch % 2:
            numpy_s.append(timed(through_numpy, loader._order)[0])
            loader_s.append(timed(through_loader)[0])
        else:
            loader_s.append(timed(through_loader)[0])
            numpy_s.append(timed(through_numpy, loader._order)[0])
        loader.on_epoch_end()
    return min(loader_s), min(numpy_s)


def small_cnn(size: int, augment: keras.layers.Layer | None) -> keras.Model:
    """A few convolutions: a model whose step costs about what a loader's batch does on a CPU."""
    inputs = keras.Input((size, size, 3))
    x = augment(inputs) if augment is not None else inputs
    x = keras.layers.Rescaling(1 / 255)(x)
    for filters in (16, 32, 64):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(x))
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    return model


class Synthetic(keras.utils.PyDataset):
    """One in-memory uint8 batch, ``steps`` times: the model's speed with no input cost."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, steps: int):
        super().__init__(workers=2)  # fed as the loader is, so only the batch's making differs
        self.images, self.targets, self.steps = np.ascontiguousarray(images), targets, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        return self.images, self.targets


def best_epochs(runs: list[tuple[keras.Model, keras.utils.PyDataset]], repeats: int = 3) -> list[float]:
    """Each (model, feed)'s best epoch time of ``repeats``, the runs taking turns epoch by epoch
    (so the shared machine's load falls on all alike), after an untimed epoch that traces each."""
    for model, data in runs:
        model.fit(data, epochs=1, verbose=0)
    best = [float("inf")] * len(runs)
    for _ in range(repeats):
        for i, (model, data) in enumerate(runs):
            started = time.perf_counter()
            model.fit(data, epochs=1, verbose=0)
            best[i] = min(best[i], time.perf_counter() - started)
    return best


def run(folder: Path, count: int = 2048, size: int = 64, batch: int = 128, workers: int = 2,
        gather_count: int = 1024, gather_size: int = 224) -> list[Row]:
    """The gather at ``gather_size`` (a 224 px cache of 1,024 images is 154 MB, more than a CPU's
    caches hold, as a real cache is); training at ``size``, which two CPU cores train in seconds."""
    gather_cache = memmapped_cache(folder, gather_count, gather_size)
    gather_targets = np.eye(CLASSES, dtype=np.float32)[np.arange(gather_count) % CLASSES]
    loader_s, numpy_s = gather_epochs(gather_cache, gather_targets, batch, epochs=6)
    copy_ratio = numpy_s / loader_s
    rows = [Row("augment", f"{gather_count} x {gather_size}px, batch {batch}: gathering loader / numpy fancy "
                           "indexing of the memmap (best of 6 epochs)",
                f"{gather_count / loader_s:,.0f} vs {gather_count / numpy_s:,.0f} img/s", copy_ratio,
                f">= {COPY_TARGET}", copy_ratio >= COPY_TARGET)]

    cache = memmapped_cache(folder, count, size)
    targets = np.eye(CLASSES, dtype=np.float32)[np.arange(count) % CLASSES]
    index = np.arange(count)
    case = f"{count} x {size}px, batch {batch}"
    loader_s = gather_epochs(cache, targets, batch, epochs=2)[0]

    cpu_feed = ImageBatches(cache, index, targets, compose(AUGMENT), batch_size=batch, shuffle=True, workers=workers)
    raw_feed = ImageBatches(cache, index, targets, None, batch_size=batch, shuffle=True, workers=workers)
    device_model = small_cnn(size, device_augment(AUGMENT, seed=0))
    synthetic = Synthetic(cache[:batch], targets[:batch], len(raw_feed))
    cpu_s, device_s, synthetic_s = best_epochs([(small_cnn(size, None), cpu_feed), (device_model, raw_feed),
                                                (device_model, synthetic)])
    rows.append(Row("augment", f"{case}: train img/s, transforms on the device / albumentations "
                               f"({workers} loader threads)",
                    f"{count / device_s:,.0f} vs {count / cpu_s:,.0f} img/s", cpu_s / device_s))
    rows.append(Row("augment", f"{case}: train img/s, device path fed by the loader / by one in-memory batch",
                    f"{count / device_s:,.0f} vs {count / synthetic_s:,.0f} img/s", synthetic_s / device_s))
    batch_s = loader_s / len(raw_feed)
    step_s = synthetic_s / len(raw_feed)
    rows.append(Row("augment", f"{case}: the device path's training step / the loader's batch",
                    f"{step_s * 1e3:.1f} ms vs {batch_s * 1e3:.2f} ms", step_s / batch_s))
    return rows + mixing(gather_cache, gather_targets, cache, targets, batch, workers)


def mixing(gather_cache: np.ndarray, gather_targets: np.ndarray, cache: np.ndarray, targets: np.ndarray,
           batch: int, workers: int) -> list[Row]:
    """MixUp and CutMix (:data:`MIX`) in the loader against on the device: the loader's CPU time
    per batch against numpy's gather, at the gather's size; training images/s at the training
    size, without per-image transforms so that only the mixing's place differs."""
    rows = []
    gather_case = f"{len(gather_cache)} x {gather_cache.shape[1]}px, batch {batch}"
    for where, mix in (("in the loader", BatchMix(*MIX, loader_pixels())), ("on the device", BatchMix(*MIX))):
        loader_s, numpy_s = gather_epochs(gather_cache, gather_targets, batch, epochs=6, mix=mix)
        per_batch = 1e3 / -(-len(gather_cache) // batch)
        met = None if not mix.on_device else numpy_s / loader_s >= COPY_TARGET
        rows.append(Row("augment", f"{gather_case}: the loader's batch with MixUp/CutMix {where} / numpy fancy "
                                   "indexing (best of 6 epochs)",
                        f"{loader_s * per_batch:.2f} ms vs {numpy_s * per_batch:.2f} ms", numpy_s / loader_s,
                        f">= {COPY_TARGET}" if mix.on_device else "", met))

    count, size = len(cache), cache.shape[1]
    index = np.arange(count)
    cpu_feed = ImageBatches(cache, index, targets, None, batch_size=batch, shuffle=True, workers=workers,
                            mix=BatchMix(*MIX, loader_pixels()))
    device_feed = ImageBatches(cache, index, targets, None, batch_size=batch, shuffle=True, workers=workers,
                               mix=BatchMix(*MIX))
    trainer = training_network(small_cnn(size, None), None, mix=True)
    trainer.compile(optimizer="adam", loss="categorical_crossentropy")
    cpu_s, device_s = best_epochs([(small_cnn(size, None), cpu_feed), (trainer, device_feed)])
    steps = len(device_feed)
    rows.append(Row("augment", f"{count} x {size}px, batch {batch}: train img/s, MixUp/CutMix on the device / in "
                               f"the loader ({workers} loader threads; step {device_s / steps * 1e3:.0f} vs "
                               f"{cpu_s / steps * 1e3:.0f} ms)",
                    f"{count / device_s:,.0f} vs {count / cpu_s:,.0f} img/s", cpu_s / device_s))
    return rows
