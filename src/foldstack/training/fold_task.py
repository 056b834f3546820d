"""What one (model, fold) training is, and what one model's prediction is, as plain data:
picklable, and free of Keras.

The train stage builds a :class:`FoldTask` and sends it to the fold's own process
(:mod:`foldstack.training.worker`), which opens the image caches it names and trains it; the
predict stage builds a :class:`PredictTask` the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foldstack.contracts import fold_done
from foldstack.core.config import AugmentConfig, ModelConfig, PipelineConfig, RegressionConfig
from foldstack.core.errors import DataError
from foldstack.core.metrics import one_hot
from foldstack.data.arrays import ImageReader
from foldstack.runtime import isolate
from foldstack.training.meta import MetaRows

#: The module whose functions run a task in its own process (by name, through
#: ``runtime.isolate.call``, so that the caller never imports Keras).
WORKER = isolate.child_module("foldstack.training.worker")

#: Input-pipeline threads when the caller names none: a Kaggle kernel's four cores at most.
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)

#: A fold's best weights, in its folder: written by training, read by prediction and Grad-CAM.
BEST = "best.weights.h5"


@dataclass(frozen=True)
class JoinedRows:
    """Rows of another split that join a fold's training rows: pseudo-labelled test images
    (``training.rounds``), external data (``data.extra``).

    Attributes:
        index: their rows in that split's image cache (``caches["test"]``, ``caches["extra"]``).
        targets: their float32 targets ``(len(index), n_classes)``, hard or soft (an ordinal
            task's: the grade ``(len(index), 1)``).
    """

    index: np.ndarray
    targets: np.ndarray


@dataclass(frozen=True, kw_only=True)
class FoldTask:
    """One model trained on all folds but one, and what it needs.

    Attributes:
        model: the model's config.
        task: ``binary``, ``multiclass``, ``multilabel``, ``ordinal`` or ``regression``.
        metric: the registry name of the metric that scores the held-out fold.
        y: every training row's encoded label (class indices, a 0/1 matrix for multilabel, the
            target's float values for a regression).
        n_classes: the number of classes (0 for a regression).
        train_index: the rows it trains on.
        valid_index: the held-out rows it predicts (its OOF rows); never trained on.
        augment: the albumentations pipelines (train, valid, TTA views).
        caches: each split's uint8 image cache (``train``, ``test``), a ``.npy`` file.
        fold_dir: where its checkpoints, log and backups go.
        seed: seeds weights, shuffling and augmentation.
        workers: input-pipeline threads.
        class_weight: per-class loss weights, or None.
        features: the ``features`` regime's cache folder (see ``training.features``), else None.
        soft_targets: every row's float32 training target ``(n_rows, n_classes)`` in place of
            its one-hot label (distillation, see ``training.rounds``), or None; the held-out
            fold is always scored against ``y``.
        pseudo: pseudo-labelled test images that join the training rows, or None.
        extra: the external rows (``data.extra``) that join the training rows, or None; never
            a validation row.
        augment_on_device: the train transforms, and MixUp's and CutMix's pixels, run inside
            the training step (``training.device_augment``), not in the loader; the fold's process decides it
            (``training.device_forms.augment_on_device``), knowing its device.
        target: a regression's loss settings (``regression``); None for the other tasks.
        meta: every training row's table columns (the model's ``meta``), row for row with
            ``y``, or None; the fold fits their scale on ``train_index`` alone
            (``training.meta``).
    """

    model: ModelConfig
    task: str
    metric: str
    y: np.ndarray
    n_classes: int
    train_index: np.ndarray
    valid_index: np.ndarray
    augment: AugmentConfig
    caches: dict[str, Path]
    fold_dir: Path
    seed: int
    workers: int = 1
    class_weight: dict[int, float] | None = None
    features: Path | None = None
    soft_targets: np.ndarray | None = None
    pseudo: JoinedRows | None = None
    extra: JoinedRows | None = None
    augment_on_device: bool = False
    target: RegressionConfig | None = None
    meta: MetaRows | None = None

    @property
    def size(self) -> int:
        return self.model.image_size

    @property
    def target_scale(self) -> tuple[float, float]:
        """A regression's target mean and standard deviation over the fold's training rows
        alone (its validation rows never shape the network): the network learns the target
        standardised by them. A constant target keeps a standard deviation of 1."""
        if self.task != "regression" or not len(self.train_index):
            return 0.0, 1.0
        values = np.asarray(self.y, dtype=np.float64)[self.train_index]
        std = float(values.std())
        return float(values.mean()), std if std > 0 else 1.0

    @property
    def targets(self) -> np.ndarray:
        """Every row's float32 target for the network: one-hot rows (or the 0/1 matrix), the
        distilled targets, or for an ordinal task the grade index ``(n, 1)`` its score regresses
        (a regression: the target ``(n, 1)``)."""
        if self.soft_targets is not None:
            return self.soft_targets
        return network_targets(self.task, self.y, self.n_classes)

    def y_true(self, index: np.ndarray) -> np.ndarray:
        """The rows' labels as the metric takes them."""
        return self.y[index]


@dataclass(frozen=True, kw_only=True)
class PredictTask:
    """One model's trained folds predicting a set of images, and what they need.

    Attributes:
        model: the model's config.
        task: ``binary``, ``multiclass`` or ``multilabel``.
        n_classes: the number of classes.
        augment: the valid transforms and the TTA views.
        images: the images' uint8 array at the model's size, a ``.npy`` file.
        fold_dirs: each fold's folder, holding its ``best.weights.h5``.
        workers: input-pipeline threads.
        features: the ``features`` regime's cache folder for these images, or None to compute
            their features without caching them (a one-off folder of new images).
        features_key: what the cached features depend on (:func:`features_key`).
        split: the name the features are cached under (``train``, ``test``).
        meta: the images' table columns (the model's ``meta``), row for row, or None; each fold
            encodes them by the scale it saved (``training.meta``).
    """

    model: ModelConfig
    task: str
    n_classes: int
    augment: AugmentConfig
    images: Path
    fold_dirs: tuple[Path, ...]
    workers: int = 1
    features: Path | None = None
    features_key: str | None = None
    split: str = "test"
    meta: MetaRows | None = None

    @property
    def size(self) -> int:
        return self.model.image_size

    @property
    def target_scale(self) -> tuple[float, float]:
        """Placeholders: a trained regression network's target scale comes with its weights."""
        return 0.0, 1.0


def network_targets(task: str, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Encoded labels ``y`` as the network's float32 targets: one-hot rows (a multilabel 0/1
    matrix as it is), for an ordinal task the grade index ``(n, 1)`` its score regresses, for a
    regression the target ``(n, 1)``."""
    if task in ("ordinal", "regression"):
        return np.asarray(y, dtype=np.float32)[:, None]
    return one_hot(y, n_classes).astype(np.float32)


def train_split(size: int | None, split: str = "train") -> str:
    """The name of a split's image cache at ``size`` among a task's ``caches``: ``train`` at the
    model's own size (None), ``train-<size>`` at a progressive-resizing size (``test-<size>``
    for the pseudo-labelled test images, ``extra-<size>`` for the external data)."""
    return split if size is None else f"{split}-{size}"


@dataclass(frozen=True)
class Member:
    """One training run of a fold: the fold, its seed and its folder's name under ``models/<m>/``.

    Without ``seeds`` a fold has one member, seeded by the pipeline seed plus the fold, in
    ``fold<k>`` (the layout before seed bagging). With ``seeds`` it has one per listed seed ``s``,
    seeded by ``s`` plus the fold, in ``fold<k>-seed<s>`` -- or ``fold<k>`` where ``s`` is the
    pipeline seed, which is the same run, so bagging keeps a fold already trained.
    """

    fold: int
    seed: int
    name: str

    @property
    def run_seed(self) -> int:
        """What seeds the run's weights, shuffling and augmentation."""
        return self.seed + self.fold


def members(model: ModelConfig, k: int, pipeline_seed: int) -> list[Member]:
    """Every run of the model's ``k`` folds, fold by fold, then by seed in the YAML's order."""
    seeds = model.seeds or [pipeline_seed]
    return [Member(fold, seed, f"fold{fold}" if seed == pipeline_seed else f"fold{fold}-seed{seed}")
            for fold in range(k) for seed in seeds]


def features_key(model: ModelConfig, augment: AugmentConfig, ids: list[str]) -> str:
    """What the ``features`` regime's backbone pass over one split depends on: the backbone, its
    weights, where it is cut, the image size, the valid transforms and TTA views, and the split's
    images. Not the head's recipe: a new learning rate or head must not run the backbone again.
    Each split has its own key, so a new test set leaves the training images' features in place.
    A key left unset stays out of the digest, so caches made before it existed stay valid."""
    cache_size = {"cache_size": model.cache_size} if model.cache_size else {}  # set: the centre crop
    cut = {"cut_layer": model.cut_layer} if model.cut_layer else {}
    return digest({"backbone": model.backbone, "weights": model.weights, "image_size": model.image_size,
                   "valid": augment.valid, "tta": augment.tta, "ids": ids, **cache_size, **cut})


def digest(value: object) -> str:
    """A stable sha256 of a JSON-able value (keys sorted): the key of what produced a file."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def weights_digest(fold_dirs: tuple[Path, ...]) -> list[str]:
    """The sha256 of each fold's best weights: the key of what the folds predict."""
    return [hashlib.sha256((fold_dir / BEST).read_bytes()).hexdigest() for fold_dir in fold_dirs]


def recipe_fingerprint(model: ModelConfig, augment: AugmentConfig, task: str, metric: str, seed: int,
                       folds_digest: str, target: RegressionConfig | None = None, pixels: str = "",
                       fine: str = "") -> str:
    """What a fold's weights depend on; a fold whose ``done.json`` holds another one trains again.
    Never the test set: a new one is predicted by the trained folds (the predict stage).

    ``seed`` is the run's own (a :class:`Member`'s), not the model's list of ``seeds``: adding a
    seed to the list trains only the new seed. ``target``: a regression's loss (its ``range``
    only clips the submission, so it is not part of the recipe). ``pixels``: how array images
    are read and scaled (``ImageReader.key``; "" for image files). ``fine``: ``data.train_label``
    and its ``label_map`` ("" without them)."""
    loss = {} if target is None else {"target": target.model_dump(mode="json", exclude={"range"})}
    read = {"pixels": pixels} if pixels else {}
    finer = {"fine": fine} if fine else {}
    return digest({"model": model.model_dump(mode="json", exclude={"seeds"}), "augment": augment.model_dump(mode="json"),
                   "task": task, "metric": metric, "seed": seed, "folds": folds_digest, **loss, **read, **finer})


def fold_fingerprint(cfg: PipelineConfig, model: ModelConfig, seed: int, folds_digest: str) -> str:
    """:func:`recipe_fingerprint` of one of the pipeline's runs."""
    fine = f"{cfg.data.train_label} {sorted(cfg.data.label_map.items())}" if cfg.data.train_label else ""
    return recipe_fingerprint(model, cfg.augment, cfg.task, cfg.metric, seed, folds_digest, training_target(cfg),
                              ImageReader.of(cfg.data).key, fine)


def network_classes(cfg: PipelineConfig, n_classes: int) -> tuple[str, int]:
    """The task and outputs a fold's network has: the pipeline's, or with ``data.train_label``
    its fine classes (a softmax over ``label_map``'s keys, summed onto the scored ``n_classes``
    by the stages, ``labels.FineClasses``)."""
    if cfg.data.train_label is None:
        return cfg.task, n_classes
    return "multiclass", len(cfg.data.label_map)


def training_target(cfg: PipelineConfig) -> RegressionConfig | None:
    """A regression pipeline's loss settings (a fold's ``target``); None for the other tasks."""
    return cfg.target if cfg.task == "regression" else None



def trained_fold_dirs(cfg: PipelineConfig, models: Path, model: ModelConfig, folds_digest: str) -> tuple[Path, ...]:
    """Each fold's folder of ``model`` under ``models`` -- each (fold, seed)'s under seed
    bagging, fold by fold (:func:`members`) -- once it is checked to hold weights of the
    pipeline's recipe.

    Raises:
        DataError: a fold is untrained, trained by another recipe, or lacks its weights.
    """
    runs = members(model, cfg.folds.k, cfg.seed)
    dirs = tuple(models / model.name / run.name for run in runs)
    for run, fold_dir in zip(runs, dirs):
        fingerprint = fold_fingerprint(cfg, model, run.seed, folds_digest)
        what = f"fold {run.fold}" + (f" seed {run.seed}" if model.seeds else "")
        done = fold_dir / fold_done.NAME
        if not fold_done.exists(fold_dir):
            raise DataError(f"{done}: not found: {what} of model {model.name!r} is not trained; "
                            "run the train stage first")
        if fold_done.finished(fold_dir, fingerprint) is None:
            raise DataError(f"{done}: {what} of model {model.name!r} was trained by another recipe "
                            "(model, augmentation, folds or seed changed since); run the train stage again")
        if not (fold_dir / BEST).is_file():
            raise DataError(f"{fold_dir / BEST}: not found; run the train stage again")
    return dirs


def predict_task(cfg: PipelineConfig, models: Path, model: ModelConfig, n_classes: int, images: Path,
                 fold_dirs: tuple[Path, ...], split: str | None, ids: list[str] | None = None,
                 workers: int = 1, meta: MetaRows | None = None) -> PredictTask:
    """What the worker needs to predict ``images`` (a ``.npy``) with ``fold_dirs``; a ``split``
    caches the ``features`` regime's backbone pass under its ids' key in the model's folder
    under ``models``; ``meta``: the images' table columns, for a model that reads them."""
    cached = model.regime == "features" and split is not None
    task, n_classes = network_classes(cfg, n_classes)
    return PredictTask(model=model, task=task, n_classes=n_classes, augment=cfg.augment,
                       images=images, fold_dirs=fold_dirs, workers=workers,
                       features=models / model.name / "features" if cached else None,
                       features_key=features_key(model, cfg.augment, ids) if cached else None,
                       split=split or "images", meta=meta)
