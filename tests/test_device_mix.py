"""MixUp and CutMix on the device: the loader draws and mixes the targets, the training step mixes
the pixels.

What is checked: for the same seed, epoch and batch the device's mixed pixels and the loader's, and
both paths' targets, are an oracle's written here from the batch's draws, for MixUp, CutMix and
a batch that draws neither; inside ``fit`` a probe sees the mixed images while the loader hands uint8 rows as cached,
and validation and prediction see them unmixed; a fold mixed on the device trains, resumes from
its backup, and its weights file predicts through the plain network (the predict stage's).
"""

from __future__ import annotations

import copy
from pathlib import Path

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from foldstack.core.config import CutMixConfig, MixUpConfig
from foldstack.core.metrics import Metric
from foldstack.training import regimes, worker
from foldstack.training.batch_mix import BatchMix
from foldstack.training.callbacks import FoldScore
from foldstack.training.device_augment import NAME, DeviceMix, loader_pixels, training_network
from foldstack.training.device_forms import augment_on_device, device_steps
from foldstack.training.fold_task import BEST, PredictTask
from foldstack.training.loader import ImageBatches
from foldstack.training.network import build_network

from conftest import make_config
from test_device_augment import Probe, network_task
from test_phases import Spy
from test_train import fold_task, model_config

MIXUP, CUTMIX = MixUpConfig(alpha=0.4, p=0.35), CutMixConfig(alpha=1.0, p=0.35)


def digits(n: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """``n`` of sklearn's digits as uint8 RGB at ``size`` px, and their one-hot targets."""
    data = load_digits()
    images = np.kron(data.images[:n] * (255 / 16), np.ones((size // 8, size // 8)))
    images = np.repeat(images[..., None], 3, axis=-1).astype(np.uint8)
    return images, np.eye(10, dtype=np.float32)[data.target[:n]]


def mix_batch(images: np.ndarray, targets: np.ndarray, mixup: MixUpConfig | None, cutmix: CutMixConfig | None,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The loader's mixing where the CPU augments: the pixels mixed in the loader."""
    return BatchMix(mixup, cutmix, loader_pixels())(images, targets, rng)


def on_device(inputs: dict[str, np.ndarray]) -> np.ndarray:
    mix = {name: value for name, value in inputs.items() if name != "image"}
    return keras.ops.convert_to_numpy(DeviceMix()(inputs["image"].astype(np.float32), mix, training=True))


def oracle(images: np.ndarray, targets: np.ndarray, permutation: np.ndarray, weight: np.ndarray,
           boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MixUp and CutMix as their papers write them, from the draws alone: each image blended with
    its partner, ``w * x + (1 - w) * x[perm]``, then its partner's pixels pasted in its box; the
    target's own share is MixUp's ``w`` times the share of pixels outside the box."""
    x = images.astype(np.float64)
    mixed = weight[:, None, None, None] * x + (1 - weight[:, None, None, None]) * x[permutation]
    kept = weight.astype(np.float64)
    for i, (top, left, height, width) in enumerate(boxes):
        mixed[i, top:top + height, left:left + width] = x[permutation[i], top:top + height, left:left + width]
        kept[i] *= 1 - height * width / (images.shape[1] * images.shape[2])
    y = targets.astype(np.float64)
    return mixed, kept[:, None] * y + (1 - kept[:, None]) * y[permutation]


def test_both_paths_mix_as_the_oracle_does() -> None:
    """Seeds that draw MixUp, CutMix and neither, on non-square images (a box with its rows and
    columns swapped lands elsewhere): the device's pixels (``DeviceMix``) and the loader's
    (the CPU path) are the oracle's from the batch's draws, and so are both paths' targets, with
    CutMix's target weight taken from the box's area, not from the draw's own weight."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 12, 20, 3), dtype=np.uint8)
    targets = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 16)]
    device, loader = BatchMix(MIXUP, CUTMIX), BatchMix(MIXUP, CUTMIX, loader_pixels())
    kinds = set()
    for seed in range(12):
        inputs, device_targets = device(images, targets, np.random.default_rng(seed))
        cpu_images, cpu_targets = loader(images, targets, np.random.default_rng(seed))
        permutation, weight, boxes = inputs["mix_permutation"], inputs["mix_weight"], inputs["mix_box"]
        assert inputs["image"] is images and sorted(permutation) == list(range(16))
        assert ((weight > 0) & (weight <= 1)).all()
        assert ((boxes[:, 0] + boxes[:, 2] <= 12) & (boxes[:, 1] + boxes[:, 3] <= 20)).all()
        kind = ("none" if (permutation == np.arange(16)).all() else
                "cutmix" if boxes[:, 2:].any() else "mixup")
        kinds.add(kind)
        assert kind == "none" or (weight < 1).any() or (boxes[:, 2] * boxes[:, 3] > 0).any()
        expected_images, expected_targets = oracle(images, targets, permutation, weight, boxes)
        for mixed in (on_device(inputs), cpu_images):
            np.testing.assert_allclose(mixed, expected_images, rtol=0, atol=1e-3)
        for mixed_targets in (device_targets, cpu_targets):
            np.testing.assert_allclose(mixed_targets, expected_targets, rtol=0, atol=1e-6)
        if kind != "none":
            assert np.abs(expected_images - images).max() > 50  # really mixed
    assert kinds == {"none", "mixup", "cutmix"}


def test_boxes_are_placed_in_the_size_the_device_transforms_make() -> None:
    """A device crop to 10 px before the mixing: CutMix's boxes lie in the 10 px image, and the
    targets' weights are their share of its 100 pixels."""
    model = model_config(cutmix={"alpha": 1.0, "p": 1.0})
    crop = device_steps([{"__class_fullname__": "RandomCrop", "height": 10, "width": 10, "p": 1.0}])
    images, targets = digits(32)
    inputs, mixed = BatchMix.of(model, device=crop)(images, targets, np.random.default_rng(0))
    top, left, height, width = inputs["mix_box"].T
    assert (top + height <= 10).all() and (left + width <= 10).all() and (height > 0).any()
    own = mixed[np.arange(32), targets.argmax(axis=1)]
    partner = targets[inputs["mix_permutation"]].argmax(axis=1) != targets.argmax(axis=1)
    np.testing.assert_allclose(own[partner], 1 - height[partner] * width[partner] / 100, atol=1e-6)


def test_mixing_goes_where_the_transforms_go_also_without_any() -> None:
    """MixUp alone (no train transform) on the device when asked for, or by ``auto`` on a GPU;
    on the CPU without a GPU, or with nothing to augment or mix."""
    mixing = model_config(mixup={"alpha": 0.2, "p": 0.5})
    device, auto = make_config(augment={"on": "device"}).augment, make_config().augment
    assert augment_on_device(mixing, device, 0)
    assert augment_on_device(mixing, auto, 1)
    assert not augment_on_device(mixing, auto, 0)
    assert not augment_on_device(model_config(), device, 1)


class Recording(BatchMix):
    """Mixes on the device, and keeps what :func:`mix_batch` makes of each batch it is given
    with the same generator: the loader's mixing on the CPU."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.on_the_cpu: list[np.ndarray] = []

    def __call__(self, images, targets, rng):
        self.on_the_cpu.append(mix_batch(images, targets, self.mixup, self.cutmix, copy.deepcopy(rng))[0])
        return super().__call__(images, targets, rng)


def test_fit_mixes_on_the_device_and_validation_and_prediction_never_do() -> None:
    """A probe in front of the backbone: in ``fit`` it sees each batch mixed as the loader would
    have mixed it on the CPU with the same draws, while the loader serves uint8 rows; the epoch's validation
    (the plain network's) and ``predict`` see the images as cached; the training model's
    inference path is the plain network's, and its weights file loads into a new plain network."""
    size, n, batch = 16, 32, 8
    images, targets = digits(n, size)
    probe = Probe()
    inputs = keras.Input((size, size, 3))
    backbone = keras.Model(inputs, keras.layers.Conv2D(4, 3)(probe(inputs)))
    plain = build_network(network_task(size), backbone, frozen_statistics=False)
    trainer = training_network(plain, None, mix=True)
    trainer.compile(optimizer="sgd", loss="categorical_crossentropy")
    mix = Recording(MixUpConfig(alpha=0.4, p=0.5), CutMixConfig(alpha=1.0, p=0.5))
    batches = ImageBatches(images, np.arange(n), targets, batch_size=batch, shuffle=True, seed=3, mix=mix)
    order = batches._order.copy()
    served, _ = batches[0]
    assert served["image"].dtype == np.uint8
    np.testing.assert_array_equal(served["image"], images[order[:batch]])

    seen_in_fit, seen_in_validation = {}, []

    def score(y_true, proba):
        seen_in_validation.append(keras.ops.convert_to_numpy(probe.seen))
        return 0.0

    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: seen_in_fit.setdefault(b, keras.ops.convert_to_numpy(probe.seen)))
    validation = FoldScore(ImageBatches(images, np.arange(batch), batch_size=batch), targets[:batch],
                           Metric("probe", score, greater_is_better=True), network=plain)
    trainer.fit(batches, epochs=1, verbose=0, callbacks=[record, validation])
    assert len(seen_in_fit) == n // batch
    for seen in seen_in_fit.values():  # each is a batch the loader served, as the loader would have mixed it
        assert any(np.allclose(seen, expected, rtol=1e-6, atol=1e-3) for expected in mix.on_the_cpu)
    assert any(not any(np.array_equal(image, row) for row in images) for image in np.concatenate(
        list(seen_in_fit.values())))  # some are mixed
    np.testing.assert_array_equal(seen_in_validation[0], images[:batch])

    proba = plain.predict(ImageBatches(images, np.arange(n), batch_size=batch), verbose=0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(probe.seen), images[n - batch:])
    params = {name: value for name, value in served.items() if name != "image"}
    through_trainer = trainer({"image": images[order[:batch]].astype(np.float32), **params}, training=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(through_trainer), proba[order[:batch]], rtol=1e-5, atol=1e-6)


def test_a_mixup_fold_on_the_device_trains_resumes_and_predicts_through_the_plain_network(
        tiny_digits, tmp_path: Path) -> None:
    """A scratch fold with MixUp and a flip on the device, stopped at its second epoch: the
    training model holds both layers and the plain network neither; the loader serves the rows
    as cached with the draws beside them; the rerun resumes from the backup at epoch 1; the
    fold's best weights predict through the predict stage's network as the fold's own
    predictor does."""
    augment = make_config(augment={"train": [{"__class_fullname__": "HorizontalFlip", "p": 0.5}],
                                   "on": "device"}).augment
    model = model_config(regime="scratch", epochs=2, patience=2, mixup={"alpha": 0.4, "p": 1.0})
    task, images = fold_task(tiny_digits, tmp_path, model, augment=augment, augment_on_device=True)
    batches = regimes.train_batches(task, images)
    inputs, mixed = batches[0]
    rows = batches._order[:len(mixed)]
    np.testing.assert_array_equal(inputs["image"], images["train"][rows])
    assert not np.isin(mixed, (0.0, 1.0)).all()

    metric = Metric("accuracy-ish", lambda y, proba: float(np.mean(proba.argmax(axis=1) == y)), greater_is_better=True)
    with pytest.raises(KeyboardInterrupt):
        regimes.fit(task, images, metric, callbacks=[Spy(interrupt_at=1)])
    assert (task.fold_dir / "backup-all").is_dir()
    keras.backend.clear_session()
    rerun = Spy()
    predict = regimes.fit(task, images, metric, callbacks=[rerun])
    assert [epoch for epoch, _ in rerun.epoch_begins] == [1]
    layers = {layer.name: layer for layer in rerun.model.layers}  # the model fit trained
    assert NAME in layers and "device_mix" in layers
    assert NAME not in [layer.name for layer in layers[task.model.name].layers]  # the network it wraps
    assert (task.fold_dir / BEST).is_file() and (task.fold_dir / "log.csv").is_file()

    predicted = worker.predict_folds(
        PredictTask(model=task.model, task=task.task, n_classes=task.n_classes, augment=augment,
                    images=task.caches["train"], fold_dirs=(task.fold_dir,), split="train"),
        send=lambda message: None)[0]
    np.testing.assert_allclose(predicted[task.valid_index], predict("train", task.valid_index), rtol=1e-5, atol=1e-6)
