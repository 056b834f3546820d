"""The callbacks every phase of a fold trains with: the competition metric on the held-out fold,
the best checkpoint, early stopping, the CSV log and resume -- Keras's own where they fit,
written atomically where a kill could tear a file."""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import h5py
import keras
import numpy as np

from foldstack.core.files import atomic_path, write_text
from foldstack.core.metrics import Metric
from foldstack.training.loader import predict

#: HDF5 attributes of a best checkpoint: the score and epoch its weights reached.
SCORE_ATTR, EPOCH_ATTR = "foldstack_val_score", "foldstack_epoch"


class EMAWeights(keras.callbacks.Callback):
    """The optimizer's moving average of the weights (``use_ema``) in the network from the end of
    each epoch to the start of the next: the callbacks after it score, checkpoint and log the
    average, and training goes on from the raw weights.

    The average itself (warmed up, carried across phases) is ``optim._PhaseOptimizer``'s (every optimizer's). Listed
    first. Keras's ``SwapEMAWeights(swap_on_epoch=True)`` swaps the two sets instead, and
    only fixes up the final epoch that ``epochs`` names: a phase that early stopping ends would
    finish holding its raw weights (``fit`` copies the optimizer's slots, then holding the raw
    ones, into the network). Here the raw weights wait in host memory and the slots keep the
    average, so ``fit``'s own finalisation leaves the average in the network however it ends.
    """

    def __init__(self):
        super().__init__()
        self._raw: list[np.ndarray] | None = None

    def _pairs(self) -> list[tuple[Any, Any]]:
        optimizer = self.model.optimizer
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer's
        return list(zip(optimizer._trainable_variables, optimizer._model_variables_moving_average))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        pairs = self._pairs()
        self._raw = [keras.ops.convert_to_numpy(variable) for variable, _ in pairs]
        for variable, average in pairs:
            variable.assign(average)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._restore()

    def on_train_end(self, logs: dict | None = None) -> None:
        self._raw = None  # fit ended with the average in the network, where it stays

    def _restore(self) -> None:
        if self._raw is not None:
            for (variable, _), raw in zip(self._pairs(), self._raw):
                variable.assign(raw)
            self._raw = None

    @contextmanager
    def raw_weights(self) -> Iterator[None]:
        """The raw weights in the network for a while (a backup, from which training resumes)."""
        if self._raw is None:
            yield
            return
        average = [keras.ops.convert_to_numpy(variable) for variable, _ in self._pairs()]
        self._restore()
        try:
            yield
        finally:
            self._raw = [keras.ops.convert_to_numpy(variable) for variable, _ in self._pairs()]
            for (variable, _), value in zip(self._pairs(), average):
                variable.assign(value)


class FoldScore(keras.callbacks.Callback):
    """Adds the competition metric on the held-out fold to the epoch logs as ``val_score``.

    Listed before the checkpoint and early-stopping callbacks, which then monitor ``val_score``
    (Keras hands every callback the same logs dict, in list order). ``network``: the one that
    predicts, where ``fit`` trains it wrapped (:func:`scored_network`).
    """

    def __init__(self, inputs, y_true: np.ndarray, metric: Metric, n_classes: int | None = None,
                 network: keras.Model | None = None):
        super().__init__()
        self.inputs = inputs
        self.y_true = y_true
        self.metric = metric
        self.n_classes = n_classes  # an ordinal score is rounded to one of these grades
        self.network = network

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["val_score"] = self.score(scored_network(self, self.network))

    def score(self, network: keras.Model) -> float:
        """The held-out fold's score of the weights now in ``network``."""
        return self.metric(self.y_true, predict(network, self.inputs), n_classes=self.n_classes)


def scored_network(callback: keras.callbacks.Callback, network: keras.Model | None) -> keras.Model:
    """``network``, or the model ``fit`` trains when there is none. The trained model is read
    first either way: under JAX that puts ``fit``'s state into the variables ``network`` shares."""
    model = callback.model
    return model if network is None else network


def save_weights(model: keras.Model, path: Path, attrs: dict[str, Any] | None = None) -> None:
    """``model.save_weights`` that a kill cannot leave half-written (a torn HDF5 file fails to
    load), with ``attrs`` stored in the same file."""
    with atomic_path(path, suffix=".weights.h5") as tmp:
        model.save_weights(str(tmp))
        if attrs:
            with h5py.File(tmp, "a") as handle:
                handle.attrs.update(attrs)


def load_weights(model: keras.Model, path: Path) -> None:
    """The weights of a checkpoint or phase marker into ``model``. The file also holds the
    optimizer of the phase that wrote it, which another phase's optimizer (other trainable
    weights) cannot take: only the weights are wanted, so Keras's warning that it skips the
    optimizer's variables is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer", category=UserWarning)
        model.load_weights(str(path))


def best_so_far(path: Path) -> float | None:
    """The score stored in the best checkpoint at ``path``, or None without one."""
    if not path.exists():
        return None
    with h5py.File(path, "r") as handle:
        score = handle.attrs.get(SCORE_ATTR)
    return None if score is None else float(score)


class BestCheckpoint(keras.callbacks.Callback):
    """The best weights by ``val_score`` over every phase of a fold and across a resume.

    The score is stored inside the weights file and renamed into place with it, so a new phase
    or a resumed run starts from the best on disk: an epoch that does worse never replaces it.
    ``network``: the one whose weights are saved, where ``fit`` trains it wrapped.
    """

    def __init__(self, path: Path, metric: Metric, network: keras.Model | None = None):
        super().__init__()
        self.path = Path(path)
        self.metric = metric
        self.network = network
        self.best: float | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.best = best_so_far(self.path)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        score = (logs or {}).get("val_score")
        if score is None or not np.isfinite(score):
            return
        if self.best is None or self.metric.better(score, self.best):
            save_weights(scored_network(self, self.network), self.path, {SCORE_ATTR: score, EPOCH_ATTR: epoch})
            self.best = score


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras's BackupAndRestore, but a kill mid-save keeps the previous complete backup; with
    ``ema`` it backs up the raw weights (the average is in the optimizer's slots, saved too),
    so a resumed run trains on from where the killed one was."""

    def __init__(self, backup_dir: str, ema: EMAWeights | None = None):
        super().__init__(backup_dir)
        self.ema = ema

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
        if self.ema is None:
            save_weights(self.model, Path(self._weights_path))
        else:
            with self.ema.raw_weights():
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


class FirstEpoch(keras.callbacks.Callback):
    """The first epoch this run of a fold trains (``epoch``; None before one starts): after a
    kill, the epoch its backup or its finished phases resume it at."""

    def __init__(self):
        super().__init__()
        self.epoch: int | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self.epoch is None:
            self.epoch = epoch


class EpochTicks(keras.callbacks.Callback):
    """``send(val_score)`` after every epoch: the train stage's progress bar, across processes."""

    def __init__(self, send: Callable[[object], None]):
        super().__init__()
        self.send = send

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.send((logs or {}).get("val_score"))
