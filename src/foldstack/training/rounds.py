"""Second rounds: a model that learns from the trained folds of models listed before it in the
pipeline, its teachers -- pseudo-labels (``pseudo_labels``) and soft-label distillation
(``distill``).

Fold safety is one rule: **fold k of the student learns only from its teachers' fold-k models**,
which never saw fold k's rows. So no label of fold k reaches fold k's OOF prediction, neither
through a pseudo-label of a test image that looks like a fold-k row nor through a soft label that
a model fitted on fold k gave a training row. The stack (fitted on every OOF row), the teachers'
mean over folds (``test/<m>.parquet``) and their plain OOF (row i of fold j predicted by fold j's
model, which trained on fold k) would each leak; ``tests/test_rounds.py`` shows both leaks and
that this rule has neither.

* Pseudo-labels: fold k's teachers predict the test images (the predict worker, their TTA views);
  the mean over teachers decides which images join fold k's training rows and with what target.
  Validation rows are never pseudo-labelled: only test images are.
* Distillation: fold k's teachers predict fold k's training rows, the very rows they trained on:
  the soft labels are in-sample, so a teacher that memorised its rows gives back nearly their
  one-hot labels, and distillation is then close to plain training. It costs one prediction pass
  over the training images per teacher (every fold's model), no extra training; the alternative,
  nested OOF (a model per pair of folds), would give out-of-sample soft labels for k(k-1)/2 more
  trainings per teacher.

The train stage's side is free of Keras: :class:`SplitImages` (the splits' files, ids and image
caches), :class:`Teachers` (each teacher's folds' predictions of a split, made once per run),
:func:`source_key` (what a student's fold learned from, for its ``done.json``) and
:func:`round_fields` (fold k's share of the teachers' predictions). The worker's side
(:func:`training_rows`) puts the pseudo-labelled test images after the training rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from foldstack.core.config import ModelConfig, PipelineConfig
from foldstack.core.metrics import one_hot
from foldstack.core.paths import Paths
from foldstack.data import tables
from foldstack.data.arrays import ImageReader
from foldstack.data.cache import model_cache
from foldstack.runtime import isolate
from foldstack.training.fold_task import (
    WORKER,
    FoldTask,
    JoinedRows,
    digest,
    predict_task,
    trained_fold_dirs,
    weights_digest,
)

TeacherFolds = Callable[[str, str], list[np.ndarray]]
"""``predictions(teacher, split)``: each of the teacher's folds' probabilities of the split's rows
(``train``: every training row in folds.csv order; ``test``: the test images)."""


class SplitImages:
    """The images a round reads, per split: their files and ids (``train``: folds.csv's, given;
    ``test``: the test table, read only when a student asks) and their image cache at a size,
    the one the stages share.

    Args:
        cfg: the pipeline.
        paths: its paths.
        train_files: every training image's file, in folds.csv order.
        train_ids: their ids.
    """

    def __init__(self, cfg: PipelineConfig, paths: Paths, train_files: list[str], train_ids: list[str]):
        self.cfg = cfg
        self.paths = paths
        self._splits: dict[str, tuple[list[str], list[str]]] = {"train": (train_files, train_ids)}

    def _split(self, split: str) -> tuple[list[str], list[str]]:
        if split not in self._splits:
            test = tables.load_test_table(self.cfg, self.paths)
            self._splits[split] = (test["path"].tolist(), test["id"].tolist())
        return self._splits[split]

    def ids(self, split: str) -> list[str]:
        return self._split(split)[1]

    def cache(self, split: str, model: ModelConfig, size: int | None = None) -> Path:
        """The split's image cache for ``model`` (at ``size``; None: its own), built if needed."""
        files, ids = self._split(split)
        return model_cache(self.paths.cache, split, files, ids, model, size, read=ImageReader.of(self.cfg.data))


@dataclass
class Teachers:
    """The pipeline's trained models as teachers: each one's folds predict a split once per run,
    in a worker process (:func:`foldstack.training.worker.predict_folds`), from the split's cache
    at the teacher's size.

    Args:
        cfg: the pipeline.
        paths: its paths.
        images: the splits' images.
        n_classes: the number of classes.
        folds_digest: folds.csv's digest (a teacher's folds are checked against its recipe).
        workers: input-pipeline threads.
    """

    cfg: PipelineConfig
    paths: Paths
    images: SplitImages
    n_classes: int
    folds_digest: str
    workers: int = 1
    _predicted: dict[tuple[str, str], list[np.ndarray]] = field(default_factory=dict, init=False, repr=False)

    def fold_dirs(self, name: str) -> tuple[Path, ...]:
        """The teacher's fold folders, checked to hold its current recipe's weights."""
        return trained_fold_dirs(self.cfg, self.paths.models, self.cfg.model(name), self.folds_digest)

    def predictions(self, name: str, split: str) -> list[np.ndarray]:
        """Each of ``name``'s folds' probabilities of the split (a :data:`TeacherFolds`)."""
        if (name, split) not in self._predicted:
            model = self.cfg.model(name)
            task = predict_task(self.cfg, self.paths.models, model, self.n_classes,
                                self.images.cache(split, model), self.fold_dirs(name), split,
                                self.images.ids(split), self.workers)
            self._predicted[name, split] = isolate.call(f"{WORKER}:predict_folds", task)
        return self._predicted[name, split]


def source_key(model: ModelConfig, fold: int, teachers: Teachers) -> str | None:
    """What fold ``fold`` of ``model`` learns from besides its own rows: each teacher's
    fold-``fold`` weights and, for pseudo-labels, the test ids; None for a first-round model.
    A fold whose ``done.json`` holds another key trains again."""
    if not model.teachers:
        return None
    return digest({"teachers": {name: weights_digest(teachers.fold_dirs(name)[fold:fold + 1])
                                for name in model.teachers},
                   "test": teachers.images.ids("test") if model.pseudo_labels else None})


def round_fields(model: ModelConfig, fold: int, train_index: np.ndarray, y: np.ndarray, n_classes: int,
                 multilabel: bool, predictions: TeacherFolds) -> dict:
    """The :class:`FoldTask` fields of fold ``fold`` of ``model`` that come from its teachers
    (``soft_targets``, ``pseudo``): each from the teachers' fold-``fold`` models only."""
    fields = {}
    if model.distill:
        teacher = _mean(predictions, model.distill.teachers, "train", fold)
        targets = one_hot(y, n_classes).astype(np.float32)
        targets[train_index] = distilled_targets(targets[train_index], teacher[train_index], model.distill.alpha)
        fields["soft_targets"] = targets
    if model.pseudo_labels:
        setting = model.pseudo_labels
        teacher = _mean(predictions, setting.teachers, "test", fold)
        fields["pseudo"] = pseudo_rows(teacher, setting.threshold, setting.soft, multilabel)
    return fields


def _mean(predictions: TeacherFolds, teachers: list[str], split: str, fold: int) -> np.ndarray:
    return np.mean([predictions(name, split)[fold] for name in teachers], axis=0)


def distilled_targets(labels: np.ndarray, teacher: np.ndarray, alpha: float) -> np.ndarray:
    """``alpha`` times the one-hot (or 0/1) ``labels`` plus ``1 - alpha`` times the teacher's
    probabilities, float32."""
    return (alpha * labels + (1 - alpha) * teacher).astype(np.float32)


def pseudo_rows(proba: np.ndarray, threshold: float, soft: bool, multilabel: bool) -> JoinedRows:
    """The test rows confident enough to train on, and their targets.

    A single-label row joins when its top probability reaches ``threshold``, labelled with its
    top class (or, ``soft``, the probabilities); a multilabel row when every class is at least
    ``threshold`` or at most ``1 - threshold``, labelled with the classes at 0.5 or above.
    """
    proba = np.asarray(proba, dtype=np.float32)
    if multilabel:
        confident = np.maximum(proba, 1 - proba).min(axis=1) >= threshold
        hard = (proba >= 0.5).astype(np.float32)
    else:
        confident = proba.max(axis=1) >= threshold
        hard = one_hot(proba.argmax(axis=1), proba.shape[1]).astype(np.float32)
    index = np.flatnonzero(confident)
    return JoinedRows(index=index, targets=(proba if soft else hard)[index])


# --- the worker's side -----------------------------------------------------------------------------


class Joined:
    """Two arrays read as one, the second's rows after the first's, without copying either (a
    memory-mapped image cache stays on disk): ``joined[rows]`` gathers the rows asked for."""

    def __init__(self, first: np.ndarray, second: np.ndarray):
        self.first = first
        self.second = second

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.first.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.first.dtype

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        n = len(self.first)
        out = np.empty((len(rows), *self.first.shape[1:]), dtype=self.first.dtype)
        inside = rows < n
        out[inside] = self.first[rows[inside]]
        out[~inside] = self.second[rows[~inside] - n]
        return out


def training_rows(task: FoldTask, train: np.ndarray, test: np.ndarray | None = None,
                  extra: np.ndarray | None = None) -> tuple[np.ndarray | Joined, np.ndarray, np.ndarray]:
    """What a fold trains on: the array to read rows from (the training split's, joined with the
    test split's when test images are pseudo-labelled, and with the external data's, after it),
    the rows to read, and every row's target. ``train``, ``test`` and ``extra`` are images or a
    ``features`` regime's feature views. The rows of ``task.valid_index`` are the training
    split's alone: a joined row is never validated on."""
    array, index, targets = train, task.train_index, task.targets
    for rows, joined in ((task.pseudo, test), (task.extra, extra)):
        if rows is None:
            continue
        more = np.zeros((len(joined), targets.shape[1]), dtype=np.float32)
        more[rows.index] = rows.targets
        array, index, targets = (Joined(array, joined), np.concatenate([index, len(array) + rows.index]),
                                 np.concatenate([targets, more]))
    return array, index, targets


def n_training_rows(task: FoldTask) -> int:
    """How many rows a fold trains on per epoch, pseudo-labelled test images and external rows included."""
    return len(task.train_index) + sum(len(rows.index) for rows in (task.pseudo, task.extra) if rows is not None)
