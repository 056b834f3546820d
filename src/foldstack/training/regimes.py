"""The four transfer regimes, each a :class:`~foldstack.training.phases.Plan`: a network and the
phases that train it. A model's YAML picks one by name (:data:`REGIMES`); :func:`fit` trains it.

* ``features``: the backbone is frozen and run once per image and TTA view
  (:mod:`foldstack.training.features`); one phase trains a head on the pooled features.
* ``finetune``: a ``head`` phase with the backbone frozen, then an ``unfrozen`` phase with the
  backbone unfrozen (all of it, the top N layers, or from a named layer) at ``finetune_lr``.
* ``partial``: the backbone cut at an earlier layer and frozen; one phase trains dense layers on it.
* ``scratch``: one phase trains everything, from pretrained or random weights.

In the regimes that keep pretrained features the backbone runs with ``training=False``
(``network.build_network``), so BatchNorm keeps its ImageNet statistics.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np

from foldstack.core.errors import DataError, one_line
from foldstack.core.metrics import Metric
from foldstack.runtime import device
from foldstack.training.augment import compose, crop
from foldstack.training.batch_mix import BatchMix, mixes
from foldstack.training.device_augment import device_augment, loader_pixels, training_network
from foldstack.training.device_forms import device_steps
from foldstack.training.features import FeatureCache
from foldstack.training.fold_task import BEST, FoldTask, PredictTask, train_split
from foldstack.training.loader import ImageBatches, predict, view_batches
from foldstack.training.meta import fit_fold, width
from foldstack.training.network import build_network, create_backbone, features_network
from foldstack.training.phases import Phase, Plan, fit_phases, resized
from foldstack.training.rounds import n_training_rows, training_rows
from foldstack.training.sampling import sampler

Predict = Callable[[str, np.ndarray], np.ndarray]
"""``predict(split, index) -> probabilities``, averaged over the TTA views."""

Images = dict[str, np.ndarray]
"""Each split's uint8 image array (``train``, ``test``)."""


def scratch(task: FoldTask, images: Images) -> tuple[Plan, Predict]:
    meta = fold_meta(task)
    network, backbone = image_network(task, any_size=bool(task.model.progressive), meta_width=_width(meta))
    phases = [Phase("all", task.model.epochs, task.model.lr, backbone="all")]
    return _image_plan(task, images, network, backbone, phases, meta), tta_predictor(task, network, images, meta)


def finetune(task: FoldTask, images: Images) -> tuple[Plan, Predict]:
    model = task.model
    meta = fold_meta(task)
    network, backbone = image_network(task, any_size=bool(model.progressive), meta_width=_width(meta))
    head_epochs = min(model.head_epochs, model.epochs)
    phases = []
    if head_epochs:
        phases.append(Phase("head", head_epochs, model.lr, backbone=None))
    if model.epochs > head_epochs:
        phases.append(Phase("unfrozen", model.epochs - head_epochs, model.finetune_lr, backbone=model.unfreeze))
    return _image_plan(task, images, network, backbone, phases, meta), tta_predictor(task, network, images, meta)


def partial(task: FoldTask, images: Images) -> tuple[Plan, Predict]:
    meta = fold_meta(task)
    network, backbone = image_network(task, any_size=bool(task.model.progressive), meta_width=_width(meta))
    phases = [Phase("head", task.model.epochs, task.model.lr, backbone=None)]
    return _image_plan(task, images, network, backbone, phases, meta), tta_predictor(task, network, images, meta)


def fold_meta(task: FoldTask) -> dict[str, np.ndarray] | None:
    """The fold's table columns (``meta``) encoded by its training rows' scale, which is saved
    in its folder for prediction (``training.meta.fit_fold``): ``{"train": rows}``, row for row
    with the training split's images; None for a model without ``meta``."""
    encoded = fit_fold(task.model.meta, task.meta, task.train_index, task.fold_dir)
    return None if encoded is None else {"train": encoded}


def _width(meta: dict[str, np.ndarray] | None) -> int:
    return 0 if meta is None else next(iter(meta.values())).shape[1]


def image_network(task: FoldTask | PredictTask, any_size: bool = False,
                  meta_width: int = 0) -> tuple[keras.Model, keras.Model]:
    """The network of an image regime (``scratch``, ``finetune``, ``partial``) and its backbone.

    ``scratch`` lets BatchNorm learn the new images' statistics; the others keep the backbone's.
    ``any_size``: it takes images of every size (progressive resizing trains it so; prediction
    builds it at ``image_size``, with the same weights). It never augments: a fold whose train
    transforms run on the device trains it wrapped (:func:`device_network`). ``meta_width``: the
    encoded table columns' width, joined to the pooled features (0: none).
    """
    model = task.model
    with device.remat_scope(model.remat):  # ``remat: true``: every layer made here recomputes its activations
        backbone = create_backbone(model, any_size)
        network = build_network(task, backbone, frozen_statistics=model.regime != "scratch",
                                dense_units=model.head_units, any_size=any_size, meta_width=meta_width)
    return network, backbone


def device_network(task: FoldTask, network: keras.Model) -> keras.Model | None:
    """What ``fit`` trains when the fold's train transforms (and its MixUp and CutMix) run on the
    device: ``network`` behind them (``device_augment.training_network``); None on the CPU."""
    if not task.augment_on_device:
        return None
    return training_network(network, device_augment(task.augment.train, seed=task.seed),
                            mix=mixes(task.model))


def features(task: FoldTask, images: Images) -> tuple[Plan, Predict]:
    if task.features is None:
        raise ValueError("the features regime needs task.features (the feature cache's folder)")
    cache = FeatureCache.load(task.features, list(images), len(task.augment.tta))
    # Every TTA view of a training image (and of a pseudo-labelled test image, an external image)
    # is a training row of its own.
    none = [None] * len(task.augment.tta)
    test_views = cache.views("test") if task.pseudo is not None else none
    extra_views = cache.views("extra") if task.extra is not None else none
    rows = [training_rows(task, view, test, extra)
            for view, test, extra in zip(cache.views("train"), test_views, extra_views)]
    train_x = np.concatenate([array[index] for array, index, _ in rows])
    train_y = np.concatenate([targets[index] for _, index, targets in rows])
    network = features_network(task, train_x.shape[1])
    batch_size = task.model.batch_size
    draw = sampler(task.model.sampler, np.arange(len(train_x)), train_y)
    plan = Plan(
        network=network, backbone=None,
        phases=[Phase("all", task.model.epochs, task.model.lr, backbone=None)],
        # Batches like the image regimes' (shuffled each epoch, seeded; under data parallel a
        # whole multiple of the devices), of feature rows.
        train=lambda phase=None: {"x": ImageBatches(train_x, np.arange(len(train_x)), train_y, batch_size=batch_size,
                                                    shuffle=True, seed=task.seed, sampler=draw)},
        steps=math.ceil((draw.size if draw else len(train_x)) / batch_size),
        # The first view's features are the plain image; validation scores it like the other regimes.
        valid=cache.views("train")[0][task.valid_index],
    )

    def predict_split(split: str, index: np.ndarray) -> np.ndarray:
        return features_tta(network, [view[index] for view in cache.views(split)])

    return plan, predict_split


def features_tta(network: keras.Model, views: list[np.ndarray]) -> np.ndarray:
    """A features-regime head's probabilities averaged over the TTA views' features."""
    return np.mean([predict(network, view) for view in views], axis=0)


REGIMES: dict[str, Callable[[FoldTask, Images], tuple[Plan, Predict]]] = {
    "features": features,
    "finetune": finetune,
    "partial": partial,
    "scratch": scratch,
}


def fit(task: FoldTask, images: Images, metric: Metric, callbacks: Sequence[keras.callbacks.Callback] = (),
        jit_compile: bool | str = False) -> Predict:
    """Train one fold with the regime its model config names; returns its TTA predictor, holding
    the best weights of any phase."""
    plan, predict = REGIMES[task.model.regime](task, images)
    fit_phases(task, plan, metric, callbacks, jit_compile)
    return predict


def trained_network(task: PredictTask, fold_dir: Path, n_features: int | None = None,
                    built: keras.Model | None = None) -> keras.Model:
    """A fold's network as its regime built it, holding the fold's best weights.

    An image regime's backbone is built with random weights: every weight comes from the file,
    so predicting needs no ImageNet download. ``n_features`` is the ``features`` regime's input
    width. ``built``: another fold's network of the same task and input widths (:func:`input_width`),
    given this fold's weights instead of building a new one: it keeps the predict function
    TensorFlow traced for it, most of a small fold's predict time.

    Raises:
        DataError: the weights file is missing or does not fit the network.
    """
    if built is not None:
        network = built
    elif task.model.regime == "features":
        network = features_network(task, n_features)
    else:
        network, _ = image_network(without_pretrained(task), meta_width=width(task.model.meta, fold_dir))
    path = fold_dir / BEST
    if not path.is_file():
        raise DataError(f"{path}: not found; run the train stage first")
    try:
        network.load_weights(str(path))
    except (ValueError, OSError, KeyError) as error:
        raise DataError(f"{path}: does not fit model {task.model.name!r} as the pipeline defines it "
                        f"({one_line(str(error))}); run the train stage again") from None
    return network


def input_width(task: PredictTask, fold_dir: Path, n_features: int | None = None) -> int:
    """What sets a fold's network's input shapes beside the image: the ``features`` regime's
    width, or the width of the table columns the fold encoded (0 without ``meta``). Folds of a task
    with the same width have networks of the same shapes (:func:`trained_network`'s ``built``)."""
    return n_features if task.model.regime == "features" else width(task.model.meta, fold_dir)


def without_pretrained(task: FoldTask | PredictTask) -> FoldTask | PredictTask:
    """``task`` with its backbone built from random weights: for a network whose every weight
    is then loaded from a fold's file, so no ImageNet file is read (or downloaded)."""
    return replace(task, model=task.model.model_copy(update={"weights": "none"}))


def _image_plan(task: FoldTask, images: Images, network: keras.Model, backbone: keras.Model,
                phases: list[Phase], meta: dict[str, np.ndarray] | None = None) -> Plan:
    """A plan that trains on augmented batches of the image cache; each phase gets fresh batches,
    at its own size under progressive resizing (validation stays at ``image_size``); ``meta``:
    the training split's encoded table columns, which every batch carries."""
    rows = None if meta is None else meta["train"]
    batch_size = task.model.batch_size
    if task.model.progressive:
        phases = resized(phases, task.model.progressive)
    _, index, targets = training_rows(task, images["train"], images.get("test"))
    draw = sampler(task.model.sampler, index, targets)
    return Plan(network=network, backbone=backbone, phases=phases, trainer=device_network(task, network),
                train=lambda phase=None: {"x": train_batches(task, images, phase.size if phase else None, rows)},
                steps=math.ceil((draw.size if draw else n_training_rows(task)) / batch_size),
                valid=view_batches(images["train"], task.valid_index, task.augment, [], batch_size, task.workers,
                                   task.model, rows))


def train_batches(task: FoldTask, images: Images, size: int | None = None,
                  meta: np.ndarray | None = None) -> ImageBatches:
    """Shuffled, augmented (and, as the model says, mixed) batches of the fold's training rows
    (and pseudo-labelled test images) at ``size`` (None: ``image_size``), seeded by the fold's
    seed; with the transforms on the device, the rows as cached, and with MixUp or CutMix the
    draws beside them and the targets mixed (the training network augments and mixes the rows).
    ``meta``: the training split's encoded table columns (the config keeps joined rows and mixing
    away from a model with them)."""
    array, index, targets = training_rows(task, images[train_split(size)], images.get(train_split(size, "test")),
                                          images.get(train_split(size, "extra")))
    cut = crop(task.model, train=True)  # cache_size: a random crop of image_size, in the loader either way
    if task.augment_on_device:
        transform, mix = compose(cut) if cut else None, BatchMix.of(task.model, device=device_steps(task.augment.train))
    else:
        transform, mix = compose([*cut, *task.augment.train]), BatchMix.of(task.model, pixels=loader_pixels())
    return ImageBatches(array, index, targets, transform,
                        batch_size=task.model.batch_size, shuffle=True, seed=task.seed, workers=task.workers,
                        mix=mix, sampler=sampler(task.model.sampler, index, targets), meta=meta)


def tta_predictor(task: FoldTask | PredictTask, network: keras.Model, images: Images,
                  meta: dict[str, np.ndarray] | None = None) -> Predict:
    """``predict(split, index)``: the network's probabilities of the split's rows averaged over
    the TTA views; ``meta``: each split's encoded table columns, for a network that takes them."""
    def predict_split(split: str, index: np.ndarray) -> np.ndarray:
        rows = None if meta is None else meta[split]
        views = [predict(network, view_batches(images[split], index, task.augment, view, task.model.batch_size,
                                               task.workers, task.model, rows))
                 for view in task.augment.tta]
        return np.mean(views, axis=0)

    return predict_split
