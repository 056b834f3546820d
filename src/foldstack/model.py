"""Networks and the four transfer regimes. Keras 3 only (``keras``, ``keras.ops``), no ``tf.*``.

A network is ``backbone -> global average pooling -> dropout -> dense`` with a float32 output
(softmax, or sigmoid for multilabel), so mixed precision never rounds the probabilities.

Regimes (a model's YAML picks one; :data:`REGIMES` maps the name to the function):

* ``features``: the backbone is frozen and run once per image and TTA view; only the head
  trains, on the cached pooled features (seconds per fold).
* ``finetune``: the head trains with the backbone frozen, then the backbone is unfrozen (all of
  it, the top N layers, or from a named layer) and everything trains at a lower rate.
* ``partial``: the backbone is cut at an earlier layer and frozen; dense layers train on top.
* ``scratch``: everything trains from the first step, from pretrained or random weights.

In the three regimes that keep pretrained features, the backbone is called with
``training=False``: BatchNorm stays in inference mode, so its ImageNet statistics are not
overwritten by a few small batches when the backbone is later unfrozen (the keras-io recipe).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from foldstack import backbones
from foldstack.augment import compose
from foldstack.config import AugmentConfig, ModelConfig
from foldstack.fold import FoldSpec
from foldstack.io import atomic_path, write_text
from foldstack.loader import ImageBatches
from foldstack.metrics import Metric

log = logging.getLogger(__name__)

_ACTIVATIONS = {"multiclass": "softmax", "binary": "softmax", "multilabel": "sigmoid"}


@dataclass(kw_only=True)
class FoldJob(FoldSpec):
    """Everything one (model, fold) training needs. ``images`` maps a split to its uint8 cache."""

    metric: Metric
    images: dict[str, np.ndarray]
    jit_compile: bool | str = False
    callbacks: list[keras.callbacks.Callback] = field(default_factory=list)
    features: FeatureCache | None = None


Predict = Callable[[str, np.ndarray], np.ndarray]
"""``predict(split, index) -> probabilities``, averaged over the TTA views."""


# --- building ------------------------------------------------------------------------------------


def create_backbone(model: ModelConfig, size: int) -> keras.Model:
    """The backbone at ``size``; cut at ``cut_layer`` (or its deepest cut point) for ``partial``."""
    cut = None
    if model.regime == "partial":
        cut = model.cut_layer or backbones.get(model.backbone).cut_layers[-1]
    return backbones.create(model.backbone, weights=model.weights, include_top=False,
                            input_shape=(size, size, 3), cut_at=cut)


def head(features, model: ModelConfig, n_classes: int, task: str, dense_units: list[int] = ()):
    x = features
    for units in dense_units:
        x = keras.layers.Dense(units, activation="relu")(x)
        x = keras.layers.Dropout(model.dropout)(x)
    x = keras.layers.Dropout(model.dropout)(x)
    return keras.layers.Dense(n_classes, activation=_ACTIVATIONS[task], dtype="float32", name="probabilities")(x)


def build_network(job: FoldJob, backbone: keras.Model, frozen_statistics: bool,
                  dense_units: list[int] = ()) -> keras.Model:
    inputs = keras.Input((job.size, job.size, 3), name="image")
    x = backbone(inputs, training=False) if frozen_statistics else backbone(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, head(x, job.model, job.n_classes, job.task, dense_units), name=job.model.name)


def compile_for(job: FoldJob, network: keras.Model, lr: float, epochs: int, steps_per_epoch: int) -> None:
    """AdamW on a cosine schedule with one epoch of linear warm-up; loss by task."""
    total = max(1, epochs * steps_per_epoch)
    warmup = min(steps_per_epoch, total // 2)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr * 0.01, decay_steps=max(1, total - warmup), alpha=0.01,
        warmup_target=lr, warmup_steps=warmup)
    loss_type = keras.losses.BinaryCrossentropy if job.task == "multilabel" else keras.losses.CategoricalCrossentropy
    network.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=job.model.weight_decay),
                    loss=loss_type(label_smoothing=job.model.label_smoothing), jit_compile=job.jit_compile)


# --- callbacks -----------------------------------------------------------------------------------


class FoldScore(keras.callbacks.Callback):
    """Adds the competition metric on the held-out fold to the epoch logs as ``val_score``.

    Listed before the checkpoint and early-stopping callbacks, which then monitor ``val_score``
    (Keras hands every callback the same logs dict, in list order).
    """

    def __init__(self, inputs, y_true: np.ndarray, metric: Metric):
        super().__init__()
        self.inputs = inputs
        self.y_true = y_true
        self.metric = metric

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        proba = self.model.predict(self.inputs, verbose=0)
        if logs is not None:
            logs["val_score"] = self.metric(self.y_true, proba)


def save_weights(model: keras.Model, path: Path) -> None:
    """``model.save_weights`` that a kill cannot leave half-written (a torn HDF5 file fails to load)."""
    with atomic_path(path, suffix=".weights.h5") as tmp:
        model.save_weights(str(tmp))


class BestCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras's ModelCheckpoint (best weights by ``monitor``), written atomically."""

    def _save_model(self, epoch, batch, logs):
        filepath = self._get_file_path(epoch, batch, logs)
        if self._should_save_model(epoch, batch, logs, filepath):  # Keras's own "is it better"
            save_weights(self.model, Path(filepath))


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras's BackupAndRestore, but a kill mid-save keeps the previous complete backup."""

    def on_train_begin(self, logs=None):
        # Keras keeps a restored start epoch on the model; a later phase must not inherit it.
        self.model._initial_epoch = None
        super().on_train_begin(logs)

    def resume_epoch(self) -> int | None:
        """The epoch a resumed fit starts at (the backup's next epoch), or None without a backup."""
        metadata = Path(self._training_metadata_path)
        return json.loads(metadata.read_text())["epoch"] if metadata.exists() else None

    def _save_model(self):
        Path(self.backup_dir).mkdir(parents=True, exist_ok=True)
        save_weights(self.model, Path(self._weights_path))
        write_text(self._training_metadata_path,
                   json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))


class ResumableCSVLogger(keras.callbacks.CSVLogger):
    """Keras's CSVLogger (appending), which first drops the rows of the epochs about to run.

    An epoch's row is written before its backup (the backup must come last, so that a backed-up
    epoch is fully logged); a kill between the two would otherwise leave that epoch's row in the
    log twice once the resumed fit runs it again.
    """

    def __init__(self, filename: Path, backup: AtomicBackupAndRestore, first_epoch: int):
        super().__init__(str(filename), append=True)
        self.backup = backup
        self.first_epoch = first_epoch

    def on_train_begin(self, logs=None):
        start = self.backup.resume_epoch()
        start = self.first_epoch if start is None else start
        path = Path(self.filename)
        if path.exists():
            header, *rows = path.read_text().splitlines(keepends=True) or [""]
            kept = [row for row in rows if int(row.split(self.sep, 1)[0]) < start]
            if len(kept) < len(rows):
                write_text(path, "".join([header, *kept]))
        super().on_train_begin(logs)


def standard_callbacks(job: FoldJob, valid_inputs, phase: str,
                       first_epoch: int = 0) -> list[keras.callbacks.Callback]:
    """Score, best checkpoint, early stopping, CSV log and resume, for one call of ``fit``
    starting at ``first_epoch``."""
    mode = "max" if job.metric.greater_is_better else "min"
    backup = AtomicBackupAndRestore(str(job.fold_dir / f"backup-{phase}"))
    return [
        FoldScore(valid_inputs, job.y_true(job.valid_index), job.metric),
        BestCheckpoint(str(job.fold_dir / "best.weights.h5"), monitor="val_score", mode=mode,
                       save_best_only=True, save_weights_only=True),
        keras.callbacks.EarlyStopping(monitor="val_score", mode=mode, patience=job.model.patience),
        ResumableCSVLogger(job.fold_dir / "log.csv", backup, first_epoch),
        backup,
        *job.callbacks,
    ]


# --- data ----------------------------------------------------------------------------------------


def train_batches(job: FoldJob) -> ImageBatches:
    return ImageBatches(job.images["train"], job.train_index, job.targets, compose(job.augment.train),
                        batch_size=job.model.batch_size, shuffle=True, seed=job.seed, workers=job.workers)


def view_batches(images: np.ndarray, index: np.ndarray, augment: AugmentConfig, view: list[dict],
                 batch_size: int, workers: int = 1) -> ImageBatches:
    """Unshuffled batches of one TTA view: the valid transforms, then the view's own."""
    return ImageBatches(images, index, transform=compose([*augment.valid, *view]),
                        batch_size=batch_size, workers=workers)


def tta_predictor(job: FoldJob, network: keras.Model) -> Predict:
    def predict(split: str, index: np.ndarray) -> np.ndarray:
        views = [network.predict(view_batches(job.images[split], index, job.augment, view,
                                              job.model.batch_size, job.workers), verbose=0)
                 for view in job.augment.tta]
        return np.mean(views, axis=0)

    return predict


def restore_best(job: FoldJob, network: keras.Model) -> None:
    best = job.fold_dir / "best.weights.h5"
    if best.exists():
        network.load_weights(str(best))


# --- the regimes ---------------------------------------------------------------------------------


def fit_scratch(job: FoldJob) -> Predict:
    network = build_network(job, create_backbone(job.model, job.size), frozen_statistics=False)
    _fit_phase(job, network, "all", job.model.lr, initial_epoch=0, epochs=job.model.epochs)
    restore_best(job, network)
    return tta_predictor(job, network)


def fit_finetune(job: FoldJob) -> Predict:
    backbone = create_backbone(job.model, job.size)
    network = build_network(job, backbone, frozen_statistics=True)
    head_epochs = min(job.model.head_epochs, job.model.epochs)
    if head_epochs:
        backbone.trainable = False
        _fit_phase(job, network, "head", job.model.lr, initial_epoch=0, epochs=head_epochs)
    unfreeze(backbone, job.model.unfreeze)
    if job.model.epochs > head_epochs:
        _fit_phase(job, network, "unfrozen", job.model.finetune_lr, initial_epoch=head_epochs,
                   epochs=job.model.epochs)
    restore_best(job, network)
    return tta_predictor(job, network)


def fit_partial(job: FoldJob) -> Predict:
    backbone = create_backbone(job.model, job.size)
    backbone.trainable = False
    network = build_network(job, backbone, frozen_statistics=True, dense_units=job.model.dense_units)
    _fit_phase(job, network, "all", job.model.lr, initial_epoch=0, epochs=job.model.epochs)
    restore_best(job, network)
    return tta_predictor(job, network)


def fit_features(job: FoldJob) -> Predict:
    features = job.features
    if features is None:
        raise ValueError("the features regime needs job.features (a FeatureCache)")
    train_x = np.concatenate([view[job.train_index] for view in features.views("train")])
    train_y = np.concatenate([job.targets[job.train_index]] * len(job.augment.tta))
    inputs = keras.Input((train_x.shape[1],), name="features")
    network = keras.Model(inputs, head(inputs, job.model, job.n_classes, job.task), name=job.model.name)
    steps = int(np.ceil(len(train_x) / job.model.batch_size))
    compile_for(job, network, job.model.lr, job.model.epochs, steps)
    # The first view's features are the plain image; validation scores it like the other regimes.
    valid_x = features.views("train")[0][job.valid_index]
    network.fit(train_x, train_y, batch_size=job.model.batch_size, epochs=job.model.epochs, shuffle=True,
                verbose=0, class_weight=job.class_weight, callbacks=standard_callbacks(job, valid_x, "all"))
    restore_best(job, network)

    def predict(split: str, index: np.ndarray) -> np.ndarray:
        return np.mean([network.predict(view[index], verbose=0) for view in features.views(split)], axis=0)

    return predict


REGIMES: dict[str, Callable[[FoldJob], Predict]] = {
    "features": fit_features,
    "finetune": fit_finetune,
    "partial": fit_partial,
    "scratch": fit_scratch,
}


def fit_fold(job: FoldJob) -> Predict:
    """Train one fold with the regime its model config names; returns its TTA predictor."""
    return REGIMES[job.model.regime](job)


def _fit_phase(job: FoldJob, network: keras.Model, phase: str, lr: float, initial_epoch: int, epochs: int) -> None:
    """One call of ``fit``; skipped when a previous run finished it (its marker file exists)."""
    done = job.fold_dir / f"phase-{phase}.weights.h5"
    if done.exists():
        network.load_weights(str(done))
        log.info("%s: phase %s already done, weights restored", job.fold_dir, phase)
        return
    data = train_batches(job)
    compile_for(job, network, lr, epochs - initial_epoch, len(data))
    valid = view_batches(job.images["train"], job.valid_index, job.augment, [], job.model.batch_size, job.workers)
    network.fit(data, initial_epoch=initial_epoch, epochs=epochs, verbose=0, class_weight=job.class_weight,
                callbacks=standard_callbacks(job, valid, phase, initial_epoch))
    save_weights(network, done)


def unfreeze(backbone: keras.Model, which: str | int) -> None:
    """Make the backbone trainable: ``"all"``, the top ``N`` layers, or from a named layer on."""
    backbone.trainable = True
    if which == "all":
        return
    layers = _leaf_layers(backbone)
    if isinstance(which, int):
        start = max(0, len(layers) - which)
    else:
        names = [layer.name for layer in layers]
        if which not in names:
            raise ValueError(f"unfreeze = {which!r}: no such layer in the backbone")
        start = names.index(which)
    for layer in layers[:start]:
        layer.trainable = False


def _leaf_layers(model: keras.Model) -> list[keras.layers.Layer]:
    leaves = []
    for layer in model.layers:
        leaves.extend(_leaf_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return leaves


class FeatureCache:
    """Pooled backbone features of every image and TTA view, computed once per model.

    Stored as ``<folder>/<split>-view<k>.npy`` beside a key that names the backbone, weights, size,
    views and image ids; a different key recomputes them.
    """

    def __init__(self, views: dict[str, list[np.ndarray]]):
        self._views = views

    def views(self, split: str) -> list[np.ndarray]:
        return self._views[split]

    @classmethod
    def build(cls, model: ModelConfig, size: int, images: dict[str, np.ndarray], augment: AugmentConfig,
              folder: Path, key: str, workers: int = 1) -> FeatureCache:
        key_file = folder / "key.json"
        if not (key_file.exists() and key_file.read_text() == key):
            cls._compute(model, size, images, augment, folder, workers)
            write_text(key_file, key)
        return cls({split: [np.load(folder / f"{split}-view{v}.npy") for v in range(len(augment.tta))]
                    for split in images})

    @staticmethod
    def _compute(model: ModelConfig, size: int, images: dict[str, np.ndarray], augment: AugmentConfig,
                 folder: Path, workers: int) -> None:
        inputs = keras.Input((size, size, 3), name="image")
        pooled = keras.layers.GlobalAveragePooling2D()(create_backbone(model, size)(inputs, training=False))
        extractor = keras.Model(inputs, pooled)
        for split, array in images.items():
            for v, view in enumerate(augment.tta):
                batches = view_batches(array, np.arange(len(array)), augment, view, model.batch_size, workers)
                with atomic_path(folder / f"{split}-view{v}.npy") as tmp:
                    with open(tmp, "wb") as handle:
                        np.save(handle, extractor.predict(batches, verbose=0).astype(np.float32))
        keras.backend.clear_session()
