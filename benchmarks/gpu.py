"""GPU training throughput: EfficientNet-B0 and ResNet50 (``keras.applications``, random weights)
at 224 px with mixed precision on the JAX backend (no TensorFlow needed), fed once by synthetic
in-memory batches (the compute ceiling), once by foldstack's ``ImageBatches`` over a uint8 array
with albumentations in its threads (``augment.on: cpu``), and once by ``ImageBatches`` that only
gathers rows, the same transforms running as Keras layers inside the compiled step
(``augment.on: device``, ``training.device_augment``). If a feed is well below the synthetic
one, the input pipeline starves the GPU (issue #16's targets: 0.9 for EfficientNet-B0 and 0.95
for ResNet50 with device augmentation).

Run on a GPU machine: ``KERAS_BACKEND=jax python -m benchmarks.gpu``. NVIDIA's published A100
figures for reference: ~3,450 img/s (EfficientNet-B0, AMP+XLA), ~2,400 img/s (ResNet50, AMP).
A CPU smoke test: ``python -m benchmarks.gpu --steps 2 --batch 4 --size 64 --models ResNet50``.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("KERAS_BACKEND", "jax")  # before Keras is imported; nothing here needs TensorFlow

import keras  # noqa: E402
import numpy as np  # noqa: E402

from foldstack.training.augment import compose  # noqa: E402
from foldstack.training.device_augment import device_augment  # noqa: E402
from foldstack.training.loader import ImageBatches  # noqa: E402

MODELS = {"EfficientNetB0": keras.applications.EfficientNetB0, "ResNet50": keras.applications.ResNet50}
AUGMENT = [{"__class_fullname__": "HorizontalFlip", "p": 0.5},
           {"__class_fullname__": "Affine", "rotate": [-10, 10], "scale": [0.9, 1.1], "p": 0.8}]
CLASSES = 1000


class SyntheticBatches(keras.utils.PyDataset):
    """The same in-memory batch ``steps`` times: what the model can do with no input cost."""

    def __init__(self, batch: int, size: int, steps: int):
        super().__init__()
        rng = np.random.default_rng(0)
        self.x = rng.uniform(0, 255, size=(batch, size, size, 3)).astype(np.float32)
        self.y = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, size=batch)]
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        return self.x, self.y


class Float32Batches(ImageBatches):
    """The loader before the fix: every batch converted to float32 on the host (4x the bytes)."""

    def __getitem__(self, batch: int):
        images, targets = super().__getitem__(batch)
        return images.astype(np.float32), targets


def real_batches(batch: int, size: int, steps: int, workers: int, kind: type = ImageBatches,
                 augment: bool = True) -> ImageBatches:
    """foldstack's loader over ``batch * steps`` random uint8 images in worker threads, augmented
    by albumentations (``augment``) or only gathered (the device path's feed)."""
    rng = np.random.default_rng(0)
    count = batch * steps
    images = rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)
    targets = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, size=count)]
    return kind(images, np.arange(count), targets, compose(AUGMENT) if augment else None, batch_size=batch,
                shuffle=True, workers=workers)


def compiled(name: str, size: int, on_device: bool = False) -> keras.Model:
    """The model, compiled with XLA, built once: the feeds then reuse its traced train step.
    ``on_device``: the transforms as Keras layers at its input, as a fold with
    ``augment.on: device`` has them."""
    model = MODELS[name](weights=None, input_shape=(size, size, 3), classes=CLASSES)
    if on_device:
        inputs = keras.Input((size, size, 3))
        model = keras.Model(inputs, model(device_augment(AUGMENT, seed=0)(inputs)))
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="categorical_crossentropy",
                  jit_compile=True)
    return model


def images_per_second(model: keras.Model, data: keras.utils.PyDataset, warm_up: bool) -> float:
    """Training images/s over one epoch of ``data``, after one untimed epoch if ``warm_up``."""
    if warm_up:
        model.fit(data, epochs=1, verbose=0)  # traces and compiles
    started = time.perf_counter()
    model.fit(data, epochs=1, verbose=0)
    seconds = time.perf_counter() - started
    return len(data) * len(data[0][0]) / seconds


def loader_images_per_second(data: ImageBatches, workers: int) -> float:
    """What the loader alone delivers with ``workers`` threads (no model): its ceiling as a feed."""
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        count = sum(len(batch[0]) for batch in pool.map(data.__getitem__, range(len(data))))
    return count / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per measurement")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="loader threads")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args(argv)
    keras.mixed_precision.set_global_policy("mixed_float16")
    print(f"backend {keras.config.backend()}, batch {args.batch}, {args.size}px, mixed_float16")
    loader = real_batches(args.batch, args.size, args.steps, args.workers)
    before = real_batches(args.batch, args.size, args.steps, args.workers, Float32Batches)
    gather = real_batches(args.batch, args.size, args.steps, args.workers, augment=False)
    for label, feed in (("uint8", loader), ("float32 (before)", before), ("gather only (device path)", gather)):
        print(f"ImageBatches alone, {label} batches ({args.workers} threads, no model): "
              f"{loader_images_per_second(feed, args.workers):,.0f} img/s", flush=True)
    print("| model | synthetic img/s | augment on cpu: ImageBatches img/s (uint8) | float32 batches (before) "
          "| augment on device img/s | cpu / synthetic | device / synthetic |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        model = compiled(name, args.size)
        synthetic = images_per_second(model, SyntheticBatches(args.batch, args.size, args.steps), warm_up=True)
        real = images_per_second(model, loader, warm_up=True)  # warm: a uint8 input traces anew
        old = images_per_second(model, before, warm_up=False)
        del model
        keras.backend.clear_session()
        model = compiled(name, args.size, on_device=True)
        device = images_per_second(model, gather, warm_up=True)
        print(f"| {name} | {synthetic:,.0f} | {real:,.0f} | {old:,.0f} | {device:,.0f} | {real / synthetic:.2f} "
              f"| {device / synthetic:.2f} |", flush=True)
        del model
        keras.backend.clear_session()


if __name__ == "__main__":
    main()
