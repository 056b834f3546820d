"""Loader: images/s per core of foldstack's input pipeline (the resized memory-mapped cache +
albumentations through ``ImageBatches``) against a plain loader that decodes and resizes every
file every epoch (PIL) before the same augmentation. Both read one epoch in the same process.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import DIGITS_YAML, Row, digits_images, timed
from foldstack.data.cache import cached_images
from foldstack.pipeline import load_pipeline
from foldstack.training.augment import compose
from foldstack.training.loader import ImageBatches  # imported here: importing Keras must not be timed

TARGET = 3.0
#: Typical ImageNet-style training transforms, at the ``size`` both loaders resize to.
TRAIN_AUGMENT = [
    {"__class_fullname__": "HorizontalFlip", "p": 0.5},
    {"__class_fullname__": "Affine", "translate_percent": [-0.08, 0.08], "rotate": [-10, 10],
     "scale": [0.9, 1.1], "p": 0.8},
    {"__class_fullname__": "RandomBrightnessContrast", "p": 0.5},
]


def synthetic_jpegs(folder: Path, count: int = 2000, seed: int = 0) -> list[str]:
    """``count`` random JPEGs of 256-512 px a side (smooth noise, so they compress like photos)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        path = folder / f"{i:05d}.jpg"
        files.append(str(path))
        if path.exists():
            continue
        width, height = rng.integers(256, 513, size=2)
        small = rng.integers(0, 256, size=(height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR).save(path, quality=90)
    return files


def plain_epoch(files: list[str], size: int, transform, batch_size: int) -> int:
    """The baseline: decode + resize every file, augment, batch as float32; returns images read."""
    for start in range(0, len(files), batch_size):
        batch = []
        for path in files[start:start + batch_size]:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
            batch.append(transform(image=array)["image"])
        np.stack(batch).astype(np.float32)
    return len(files)


def foldstack_epoch(cache: np.ndarray, transform, batch_size: int, workers: int) -> int:
    """foldstack's loader: every batch of one shuffled epoch of ``ImageBatches``."""
    batches = ImageBatches(cache, np.arange(len(cache)), np.zeros(len(cache)), transform,
                           batch_size=batch_size, shuffle=True, workers=workers)
    for i in range(len(batches)):
        batches[i]
    return len(cache)


def augment_only(cache: np.ndarray, transform) -> int:
    """The floor of any loader with this augmentation: the transform on each image, nothing else."""
    for image in cache:
        transform(image=np.asarray(image))
    return len(cache)


def compare(name: str, files: list[str], cache: np.ndarray, size: int, augment: list[dict],
            batch_size: int = 64) -> list[Row]:
    """Both loaders over the same images, one thread each, so the ratio is per core; and
    foldstack's loader against the augmentation alone, which no loader can beat."""
    plain_s, n = timed(plain_epoch, files, size, compose(augment), batch_size)
    ours_s, _ = timed(foldstack_epoch, cache, compose(augment), batch_size, 1)
    floor_s, _ = timed(augment_only, cache, compose(augment))
    ratio = plain_s / ours_s
    return [Row("loader", f"{name}: foldstack / decode every epoch, 1 thread",
                f"{n / ours_s:,.0f} vs {n / plain_s:,.0f} img/s per core", ratio, f">= {TARGET:.0f}x",
                ratio >= TARGET),
            Row("loader", f"{name}: augmentation alone / foldstack (1.00 = nothing but augmenting)",
                f"{n / floor_s:,.0f} vs {n / ours_s:,.0f} img/s per core", floor_s / ours_s)]


def run(folder: Path, size: int = 224, count: int = 2000) -> list[Row]:
    """Digits (8x8 PNGs at 16 px, the pipeline's augmentation) and ``count`` JPEGs at ``size``."""
    digit_files, digit_cache, _ = digits_images(folder / "digits", 16)
    rows = compare("digits 16px", digit_files, digit_cache, 16, load_pipeline(DIGITS_YAML).augment.train)
    files = synthetic_jpegs(folder / "jpegs", count)
    ids = [os.path.basename(f) for f in files]
    # Building the cache is a one-off (the `train` stage does it once per size): timed apart.
    build_s, cache = timed(cached_images, files, ids, size, folder / "jpegs-cache" / f"{size}.npy")
    rows += compare(f"{count} JPEGs 256-512px at {size}px", files, cache, size, TRAIN_AUGMENT)
    rows.append(Row("loader", f"{count} JPEGs: one-off cache build at {size}px", f"{build_s:.1f} s"))
    return rows
