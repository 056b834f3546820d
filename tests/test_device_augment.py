"""Augmentation on the device: the train transforms' Keras forms inside the compiled training step.

What is checked: each device form does what its albumentations transform does (at fixed
parameters, against albumentations' own output); a probe inside the network sees augmented
images while ``fit`` trains the network behind the layer and the images as cached at inference;
a fold trained so keeps a loader that only gathers rows, and its weights predict through the
network without the layer (the predict stage's); ``auto`` picks the CPU here and the device where
the probe finds a GPU; a transform without a device form is one line naming it. (MixUp and
CutMix on the device: ``test_device_mix.py``.)
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from foldstack.core.config import ConfigError
from foldstack.pipeline import parse_pipeline
from foldstack.runtime import device
from foldstack.training import regimes, worker
from foldstack.training.augment import compose
from foldstack.training.device_augment import NAME, DeviceAugment, device_augment, training_network
from foldstack.training.device_forms import augment_on_device
from foldstack.training.fold_task import BEST, FoldTask, PredictTask, recipe_fingerprint
from foldstack.training.loader import ImageBatches
from foldstack.training.network import build_network

from conftest import TINY, make_config
from test_train import fold_task, model_config

FLIP = {"__class_fullname__": "HorizontalFlip", "p": 0.5}


def picture(size: int = 24) -> np.ndarray:
    """A uint8 picture that no flip, rotation, zoom or shift leaves as it was: an off-centre L."""
    image = np.zeros((size, size, 3), np.uint8)
    image[3:9, 4:19] = (250, 120, 30)
    image[9:20, 4:8] = (90, 200, 160)
    return image


def on_device(layer: DeviceAugment, images: np.ndarray, training: bool = True) -> np.ndarray:
    return keras.ops.convert_to_numpy(layer(images.astype(np.float32), training=training))


def by_albumentations(transform: dict, image: np.ndarray) -> np.ndarray:
    pipeline = compose([transform])
    pipeline.set_random_seed(0)
    return pipeline(image=image)["image"].astype(np.float32)


# --- the device forms against albumentations ------------------------------------------------------

@pytest.mark.parametrize("transform, tolerance", [
    ({"__class_fullname__": "Affine", "rotate": [25, 25], "p": 1.0}, 1.0),
    ({"__class_fullname__": "Affine", "scale": [1.25, 1.25], "p": 1.0}, 1.0),
    ({"__class_fullname__": "Affine", "translate_percent": {"x": [0.25, 0.25], "y": [-0.125, -0.125]}, "p": 1.0},
     1e-3),
    ({"__class_fullname__": "Rotate", "limit": [-30, -30], "border_mode": 0, "p": 1.0}, 1.0),
    ({"__class_fullname__": "RandomBrightnessContrast", "brightness_limit": [0.2, 0.2],
      "contrast_limit": [0.0, 0.0], "p": 1.0}, 1.0),
])
def test_a_device_form_does_what_albumentations_does(transform: dict, tolerance: float) -> None:
    """At a fixed parameter, the Keras form's image is albumentations' own, up to interpolation
    (mean absolute difference in 0-255 levels; the picture's edges are 100-250 levels high)."""
    image = picture()
    expected = by_albumentations(transform, image)
    got = on_device(device_augment([transform], seed=0), image[None])[0]
    assert not np.array_equal(expected, image)  # the transform moves the picture
    assert np.abs(got - expected).mean() < tolerance


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_array_images_of_any_channels_augment_on_the_device_channel_by_channel(channels: int) -> None:
    """Array images (``data.channels`` not 3) take every device form: each channel moves as the RGB
    picture's channel it copies does under the same draw, none mixed with another. The same seed
    gives the same draw: every random Keras layer inside is seeded (the flip's was not)."""
    transforms = [{"__class_fullname__": "Affine", "rotate": [25, 25], "scale": [1.1, 1.1], "p": 1.0},
                  {"__class_fullname__": "RandomBrightnessContrast", "brightness_limit": [0.1, 0.1],
                   "contrast_limit": [0.2, 0.2], "p": 1.0},
                  {"__class_fullname__": "HorizontalFlip", "p": 0.5}]
    copies = [i % 3 for i in range(channels)]
    rgb = picture()
    want = on_device(device_augment(transforms, seed=0), rgb[None])[0]
    got = on_device(device_augment(transforms, seed=0), rgb[None][..., copies])[0]
    assert got.shape == (*rgb.shape[:2], channels) and not np.array_equal(got, rgb[..., copies])
    np.testing.assert_allclose(got, want[..., copies], atol=1e-3)


def textured(size: int = 24) -> np.ndarray:
    """The off-centre L on a gradient reaching every edge: a border filled black, repeated or
    reflected differs, and so does a nearest-pixel sample from a bilinear one."""
    rows, cols = np.mgrid[0:size, 0:size]
    image = np.stack([cols * 9 + 20, rows * 9 + 20, (rows + cols) * 4 + 10], axis=-1).astype(np.uint8)
    image[3:9, 4:19] = (250, 120, 30)
    image[9:20, 4:8] = (90, 200, 160)
    return image


@pytest.mark.parametrize("transform, tolerance", [
    ({"__class_fullname__": "Affine", "rotate": [25, 25], "border_mode": 1, "p": 1.0}, 1.0),  # edge repeated
    ({"__class_fullname__": "Affine", "scale": [0.75, 0.75], "border_mode": 2, "p": 1.0}, 1.0),  # reflected
    ({"__class_fullname__": "Affine", "translate_percent": {"x": [0.25, 0.25], "y": [-0.125, -0.125]},
      "border_mode": 2, "interpolation": 0, "p": 1.0}, 1e-3),
    ({"__class_fullname__": "Affine", "rotate": [25, 25], "fill": 128, "p": 1.0}, 1.0),  # a grey fill
    ({"__class_fullname__": "Affine", "rotate": [25, 25], "interpolation": 0, "p": 1.0}, 1e-3),  # nearest
    ({"__class_fullname__": "Rotate", "limit": [-30, -30], "border_mode": 2, "interpolation": 0, "p": 1.0}, 1e-3),
    ({"__class_fullname__": "Resize", "height": 40, "width": 40, "interpolation": 6, "p": 1.0}, 1e-3),
])
def test_a_device_form_fills_and_samples_as_albumentations_does(transform: dict, tolerance: float) -> None:
    """Border modes and interpolations map to Keras's own: the device's image is albumentations'
    (black fill for a reflected border, or bilinear for nearest, differs by several levels on
    average; nearest on both sides is exact)."""
    image = textured()
    expected = by_albumentations(transform, image)
    got = on_device(device_augment([transform], seed=0), image[None])[0]
    assert np.abs(got - expected).mean() < tolerance


def test_a_flip_keeps_albumentations_p_per_image() -> None:
    """Keras's RandomFlip flips half the images; p = 0.25 flips a quarter of them, each image
    either as cached or exactly albumentations' flip of it."""
    image = picture()
    flipped = by_albumentations({"__class_fullname__": "HorizontalFlip", "p": 1.0}, image)
    out = on_device(device_augment([{"__class_fullname__": "HorizontalFlip", "p": 0.25}], seed=0),
                    np.repeat(image[None], 400, axis=0))
    is_flipped = np.array([np.array_equal(o, flipped) for o in out])
    is_plain = np.array([np.array_equal(o, image) for o in out])
    assert (is_flipped | is_plain).all()
    assert 0.18 < is_flipped.mean() < 0.32


# --- inside the training step, never at inference -------------------------------------------------

class Probe(keras.layers.Layer):
    """Keeps the last batch it was called on in a variable: what the backbone was given."""

    def build(self, input_shape):
        self.seen = self.add_weight(shape=(8, *input_shape[1:]), initializer="zeros", trainable=False)

    def call(self, images):
        self.seen.assign(images[:8])
        return images


def test_the_network_augments_inside_fit_and_never_at_inference() -> None:
    """Eight copies of one picture a batch, fed raw by the loader: in ``fit``'s compiled step the
    backbone sees some flipped and some as cached; in ``predict`` every one as cached."""
    size = 24
    task = network_task(size)
    probe = Probe()
    inputs = keras.Input((size, size, 3))
    features = keras.layers.Conv2D(4, 3)(probe(inputs))
    network = build_network(task, keras.Model(inputs, features), frozen_statistics=False)
    trainer = training_network(network, device_augment([FLIP], seed=0), mix=False)
    trainer.compile(optimizer="sgd", loss="categorical_crossentropy")
    images = np.repeat(picture(size)[None], 64, axis=0)
    targets = np.eye(10, dtype=np.float32)[np.arange(64) % 10]
    flipped = by_albumentations({"__class_fullname__": "HorizontalFlip", "p": 1.0}, picture(size))

    seen_in_fit = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen_in_fit.extend(keras.ops.convert_to_numpy(probe.seen)))
    trainer.fit(ImageBatches(images, np.arange(64), targets, batch_size=8, shuffle=True), epochs=1, verbose=0,
                callbacks=[record])
    assert any(np.array_equal(image, flipped) for image in seen_in_fit)
    assert any(np.array_equal(image, picture(size)) for image in seen_in_fit)

    network.predict(ImageBatches(images, np.arange(64), batch_size=8), verbose=0)
    assert all(np.array_equal(image, picture(size)) for image in keras.ops.convert_to_numpy(probe.seen))


def network_task(size: int) -> FoldTask:
    """What ``build_network`` reads of a fold (size, classes, task), with no data behind it."""
    cfg = make_config()
    return FoldTask(model=model_config(image_size=size, regime="scratch"), task=cfg.task, metric=cfg.metric,
                    y=np.zeros(1, int), n_classes=10, train_index=np.zeros(0, int), valid_index=np.zeros(0, int),
                    augment=cfg.augment, caches={}, fold_dir=Path("."), seed=0)


def test_a_device_fold_gathers_rows_and_its_weights_predict_without_the_layer(tiny_digits, tmp_path: Path) -> None:
    """A fold placed on the device: the model it trains holds the layer (its network does not),
    its loader hands over rows exactly as cached, and the predict stage's network loaded with its
    weights file predicts as it does: the file is the same, and inference is never augmented."""
    augment = make_config(augment={"train": [FLIP, {"__class_fullname__": "Affine", "rotate": [-20, 20], "p": 0.8}],
                                   "on": "device"}).augment
    task, images = fold_task(tiny_digits, tmp_path, model_config(regime="scratch", epochs=1), augment=augment,
                             augment_on_device=True)
    plan, predict = regimes.scratch(task, images)
    assert NAME in [layer.name for layer in plan.trainer.layers]
    assert NAME not in [layer.name for layer in plan.network.layers]
    batches = plan.train()["x"]
    batch, _ = batches[0]
    np.testing.assert_array_equal(batch, images["train"][batches._order[:len(batch)]])

    plan.network.save_weights(str(task.fold_dir / BEST))
    predicted = worker.predict_folds(
        PredictTask(model=task.model, task=task.task, n_classes=task.n_classes, augment=augment,
                    images=task.caches["train"], fold_dirs=(task.fold_dir,), split="train"),
        send=lambda message: None)[0]
    np.testing.assert_allclose(predicted[task.valid_index], predict("train", task.valid_index), rtol=1e-5, atol=1e-6)


# --- where: auto, the probe, the model's own choice ------------------------------------------------

def test_auto_is_the_cpu_here_and_the_device_where_the_probe_finds_a_gpu(monkeypatch) -> None:
    cfg = make_config(augment={"train": [FLIP]})
    model = cfg.models[0]
    assert cfg.augment.on == "auto"
    monkeypatch.setattr(device, "gpu_count", lambda: 0)  # a CPU machine, whatever this one has
    assert not augment_on_device(model, cfg.augment, device.configure().gpus)

    monkeypatch.setattr(device, "gpu_count", lambda: 1)
    try:
        assert augment_on_device(model, cfg.augment, device.configure().gpus)
    finally:
        keras.mixed_precision.set_global_policy("float32")  # configure() set mixed precision for the "GPU"

    rotate90 = make_config(augment={"train": [FLIP, {"__class_fullname__": "RandomRotate90", "p": 0.5}]})
    assert not augment_on_device(model, rotate90.augment, 1)  # a transform without a device form: the CPU
    crop = make_config(augment={"train": [{"__class_fullname__": "RandomCrop", "height": 12, "width": 12, "p": 1.0},
                                          {"__class_fullname__": "Resize", "height": 16, "width": 16, "p": 1.0}]})
    assert not augment_on_device(model, crop.augment, 1)  # a form that keeps the step from compiling: the CPU
    forced = make_config(augment={"train": [FLIP], "on": "cpu"})
    assert not augment_on_device(model, forced.augment, 1)
    assert augment_on_device(model.model_copy(update={"augment_on": "device"}), cfg.augment, 0)
    features = model_config(regime="features")
    assert not augment_on_device(features, make_config(augment={"train": [FLIP], "on": "device"}).augment, 1)


@pytest.mark.parametrize("where, transforms, message", [
    ("pipeline", [FLIP, {"__class_fullname__": "RandomRotate90", "p": 0.5}],
     "augment.on = 'device': Value error, augment.train: [1] RandomRotate90 has no device form"),
    ("model", [{"__class_fullname__": "HueSaturationValue", "p": 0.5}],
     "models.0.augment_on = 'device': Value error, augment.train: [0] HueSaturationValue has no device form"),
    ("pipeline", [{"__class_fullname__": "HorizontalFlip", "p": 0.9}],
     "augment.on = 'device': Value error, augment.train: [0] HorizontalFlip: p = 0.9: Keras's RandomFlip flips half the images at most"),
    ("pipeline", [{"__class_fullname__": "Affine", "shear": [-10, 10], "p": 0.5}],
     "augment.on = 'device': Value error, augment.train: [0] Affine: shear has no device form"),
    ("pipeline", [{"__class_fullname__": "Rotate", "limit": 10, "border_mode": 4, "p": 0.5}],
     "augment.on = 'device': Value error, augment.train: [0] Rotate: border_mode = 4 (cv2.BORDER_REFLECT_101) has "
     "no device form; those with one: 0 (cv2.BORDER_CONSTANT), 1 (cv2.BORDER_REPLICATE), 2 (cv2.BORDER_REFLECT)"),
    ("model", [{"__class_fullname__": "Affine", "rotate": 10, "border_mode": 3, "p": 0.5}],
     "models.0.augment_on = 'device': Value error, augment.train: [0] Affine: border_mode = 3 (cv2.BORDER_WRAP)"),
    ("pipeline", [{"__class_fullname__": "Affine", "scale": [0.9, 1.1], "interpolation": 2, "p": 0.5}],
     "augment.on = 'device': Value error, augment.train: [0] Affine: interpolation = 2 (cv2.INTER_CUBIC) has no "
     "device form; those with one: 0 (cv2.INTER_NEAREST), 1 (cv2.INTER_LINEAR)"),
    ("pipeline", [{"__class_fullname__": "Resize", "height": 16, "width": 16, "interpolation": 0, "p": 1.0}],
     "augment.on = 'device': Value error, augment.train: [0] Resize: interpolation = 0 (cv2.INTER_NEAREST) has no "
     "device form; those with one: 6 (cv2.INTER_NEAREST_EXACT), 1 (cv2.INTER_LINEAR)"),
])
def test_device_refuses_a_transform_without_a_device_form_in_one_line(where, transforms, message) -> None:
    raw = copy.deepcopy(TINY)
    raw["augment"] = {"train": transforms, **({"on": "device"} if where == "pipeline" else {})}
    if where == "model":
        raw["models"][0]["augment_on"] = "device"
    with pytest.raises(ConfigError) as error:
        parse_pipeline(copy.deepcopy(raw), "p.yaml")
    assert str(error.value).startswith(f"p.yaml: {message}") and "\n" not in str(error.value)
    raw["augment"].pop("on", None)
    raw["models"][0].pop("augment_on", None)
    auto = parse_pipeline(raw)
    assert auto.augment.on == "auto"  # auto takes it, and augments it on the CPU, also where there is a GPU
    assert not augment_on_device(auto.models[0], auto.augment, 1)


def test_the_defaults_leave_fingerprints_as_they_were() -> None:
    """``on: auto`` and no ``augment_on`` are out of the dumps a fold's fingerprint is made of,
    so folds trained before the keys existed are not trained again; a choice written out is in."""
    cfg = make_config(augment={"train": [FLIP]})
    assert "on" not in cfg.augment.model_dump() and "augment_on" not in cfg.models[0].model_dump()
    before = recipe_fingerprint(cfg.models[0], cfg.augment, "multiclass", "accuracy", 0, "f")
    device_cfg = make_config(augment={"train": [FLIP], "on": "device"})
    assert recipe_fingerprint(device_cfg.models[0], device_cfg.augment, "multiclass", "accuracy", 0, "f") != before


JIT_PROBE = """
import keras
from foldstack.training.device_augment import device_augment
for transforms in ({transforms}):
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3)(device_augment(transforms)(inputs)))
    model.compile(optimizer="sgd", loss="mse", jit_compile="auto")
    print(model.jit_compile)

# MixUp and CutMix on the device: the step with the mixing keeps XLA, and the jitted layer mixes
# the pixels as the loader does.
import jax
import numpy as np
from foldstack.core.config import CutMixConfig, MixUpConfig
from foldstack.training.batch_mix import BatchMix
from foldstack.training.device_augment import DeviceMix, loader_pixels, training_network
inputs = keras.Input((16, 16, 3))
plain = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(inputs)))
trainer = training_network(plain, device_augment(({transforms})[0]), mix=True)
trainer.compile(optimizer="sgd", loss="mse", jit_compile="auto")
print(trainer.jit_compile)
images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3)).astype(np.uint8)
targets = np.eye(2, dtype=np.float32)[np.arange(8) % 2]
mixing = (MixUpConfig(alpha=0.4, p=0.5), CutMixConfig(alpha=1.0, p=0.5))
layer = DeviceMix()
step = jax.jit(lambda image, mix: layer(image, mix, training=True))
for seed in range(4):
    batch, mixed_targets = BatchMix(*mixing)(images, targets, np.random.default_rng(seed))
    trainer.train_on_batch(batch, mixed_targets)
    expected, _ = BatchMix(*mixing, loader_pixels())(images, targets, np.random.default_rng(seed))
    mix = {{name: value for name, value in batch.items() if name != "image"}}
    print(bool(np.allclose(step(images.astype(np.float32), mix), expected, atol=1e-3)))
"""


def test_under_jax_the_training_step_keeps_xla_unless_a_crop_forbids_it() -> None:
    """Keras marks its geometric layers uncompilable for every backend, which under JAX would run
    the whole training step op by op; the device layer lifts that where JAX compiles them
    (rotation, zoom, shift), not for RandomCrop (offsets drawn in the step). MixUp and CutMix on
    the device keep XLA too, and jitted they mix as the loader does."""
    affine = [FLIP, {"__class_fullname__": "Affine", "rotate": [-10, 10], "scale": [0.9, 1.1],
                     "translate_percent": [-0.1, 0.1], "p": 0.5}]
    crop = [{"__class_fullname__": "RandomCrop", "height": 12, "width": 12, "p": 1.0}]
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", JIT_PROBE.format(transforms=f"{affine!r}, {crop!r}")], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False", "True", "True", "True", "True", "True"]
