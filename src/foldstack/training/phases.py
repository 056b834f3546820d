"""Training as declared phases: a regime says what each phase trains, at what learning rate and
for how many epochs; :func:`fit_phases` is the one function that fits them.

Each phase is one ``fit`` call after setting what is trainable and compiling afresh (a change of
trainable weights needs a new compile). Across phases the epochs count on (phase two starts at
the epoch where phase one ended) and one best checkpoint is kept: it holds the best epoch of any
phase. A finished phase leaves its end weights as a marker file, so a rerun skips it; a phase cut
short resumes from its last backed-up epoch (Keras's ``BackupAndRestore``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import keras

from foldstack.contracts import training_log
from foldstack.core.config import ResizeStep
from foldstack.core.metrics import Metric
from foldstack.training.averaging import EpochSnapshots, average_into_best
from foldstack.training.callbacks import (
    AtomicBackupAndRestore,
    BestCheckpoint,
    EMAWeights,
    FoldScore,
    ResumableCSVLogger,
    load_weights,
    save_weights,
)
from foldstack.training.fold_task import BEST, FoldTask
from foldstack.training.network import compile_for, set_trainable
from foldstack.training.optim import layer_scales, phase_recipe

log = logging.getLogger(__name__)

LOG = training_log.NAME


@dataclass(frozen=True)
class Phase:
    """One ``fit`` call of a regime.

    Attributes:
        name: names the phase's marker and backup (``phase-<name>.weights.h5``, ``backup-<name>``).
        epochs: how many epochs it trains.
        lr: its peak learning rate.
        backbone: what of the backbone trains: None (frozen), ``"all"``, the top N layers, or
            every layer from a named one on. Ignored by a network without a backbone.
        size: the training images' size, or None for the model's ``image_size`` (progressive
            resizing, :func:`resized`). Validation is always at ``image_size``.
        recipe: the phase whose optimizer, schedule and layer decay it takes from the model's
            ``phases`` (``optim.phase_recipe``); None: its own name (a resized phase keeps the
            name it was cut from).
    """

    name: str
    epochs: int
    lr: float
    backbone: str | int | None = "all"
    size: int | None = None
    recipe: str | None = None


def resized(phases: Sequence[Phase], steps: Sequence[ResizeStep]) -> list[Phase]:
    """``phases`` cut where progressive resizing changes size: the first ``steps[0].epochs``
    epochs of the schedule at ``steps[0].size``, and so on; the epochs after the steps at the
    model's own size. A phase that spans a change becomes one phase per size, each a ``fit`` of
    its own (named ``<name>-<size>px`` below the final size) that compiles afresh, as fastai's
    progressive resizing fine-tunes once per size."""
    sizes = [size for step in steps for size in [step.size] * step.epochs]
    out = []
    first = 0
    for phase in phases:
        epoch_sizes = [sizes[e] if e < len(sizes) else None for e in range(first, first + phase.epochs)]
        first += phase.epochs
        for size in dict.fromkeys(epoch_sizes):
            name = phase.name if size is None else f"{phase.name}-{size}px"
            out.append(replace(phase, name=name, epochs=epoch_sizes.count(size), size=size,
                               recipe=phase.recipe or phase.name))
    return out


@dataclass
class Plan:
    """A regime's network and how to train it: its phases and the data they see.

    Attributes:
        network: the fold's network, end to end: what is scored, checkpointed and predicted
            with, and what ``fit`` trains unless ``trainer`` wraps it.
        backbone: the backbone inside it whose trainable layers the phases set, or None.
        phases: what to train, in order.
        train: makes a phase's training data (at its size; without a phase, the model's own), as
            ``fit``'s keywords (``x`` a batch sequence, or ``x``, ``y``, ``batch_size`` and
            ``shuffle`` for arrays).
        steps: batches per epoch (for the learning-rate schedule).
        valid: what ``predict`` takes for the held-out fold's score each epoch.
        trainer: what ``fit`` trains when it is not ``network`` itself: ``network`` behind the
            device's augmentation and mixing (``device_augment.training_network``), sharing its
            weights. ``network`` is still what is scored, checkpointed and predicted with.
    """

    network: keras.Model
    backbone: keras.Model | None
    phases: Sequence[Phase]
    train: Callable[[Phase | None], dict[str, Any]]
    steps: int
    valid: Any
    trainer: keras.Model | None = None

    @property
    def fitted(self) -> keras.Model:
        """The model ``fit`` trains (compiled, holding the optimizer; backed up to resume)."""
        return self.network if self.trainer is None else self.trainer


def fit_phases(task: FoldTask, plan: Plan, metric: Metric, callbacks: Sequence[keras.callbacks.Callback] = (),
               jit_compile: bool | str = False) -> None:
    """Fit every phase of ``plan`` in order, then load the best weights of any phase."""
    best = BestCheckpoint(task.fold_dir / BEST, metric, network=plan.network)
    first_epoch = 0
    for phase in plan.phases:
        _fit_phase(task, plan, phase, first_epoch, metric, best, callbacks, jit_compile)
        first_epoch += phase.epochs
    if task.model.average is not None:
        average_into_best(plan.network, best.path, task.model.average, metric, _fold_score(task, plan, metric).score)
    if best.path.exists():
        load_weights(plan.network, best.path)


def _fit_phase(task: FoldTask, plan: Plan, phase: Phase, first_epoch: int, metric: Metric, best: BestCheckpoint,
               callbacks: Sequence[keras.callbacks.Callback], jit_compile: bool | str) -> None:
    """One call of ``fit``; skipped when a previous run finished it (its marker file exists)."""
    done = task.fold_dir / f"phase-{phase.name}.weights.h5"
    if done.exists():
        load_weights(plan.network, done)
        log.info("%s: phase %s already done, weights restored", task.fold_dir, phase.name)
        return
    if plan.backbone is not None:
        set_trainable(plan.backbone, phase.backbone)
    recipe = phase_recipe(task.model, phase.recipe or phase.name)
    scales = layer_scales(plan.backbone, task.model.backbone, recipe.layer_decay) if phase.backbone is not None else None
    compile_for(task, plan.fitted, phase.lr, phase.epochs, plan.steps, jit_compile, ema_step=first_epoch * plan.steps,
                recipe=recipe, lr_scales=scales)
    plan.fitted.fit(**plan.train(phase), initial_epoch=first_epoch, epochs=first_epoch + phase.epochs, verbose=0,
                     class_weight=task.class_weight,
                     callbacks=_phase_callbacks(task, plan, phase, first_epoch, metric, best, callbacks))
    save_weights(plan.network, done)


def _fold_score(task: FoldTask, plan: Plan, metric: Metric) -> FoldScore:
    return FoldScore(plan.valid, task.y_true(task.valid_index), metric, n_classes=task.n_classes, network=plan.network)


def _phase_callbacks(task: FoldTask, plan: Plan, phase: Phase, first_epoch: int, metric: Metric,
                     best: BestCheckpoint, callbacks: Sequence[keras.callbacks.Callback]) -> list:
    """The EMA weights first (with ``ema``: what the others see at an epoch's end), score (the
    others read its ``val_score``), then the best checkpoint shared by every phase, early
    stopping, the log, the backup (a backed-up epoch is fully logged), then the caller's. With
    ``average``, each epoch's snapshot after the checkpoint (``averaging.EpochSnapshots``)."""
    mode = "max" if metric.greater_is_better else "min"
    ema = EMAWeights() if task.model.ema else None
    backup = AtomicBackupAndRestore(str(task.fold_dir / f"backup-{phase.name}"), ema=ema)
    average = task.model.average
    resume = backup.resume_epoch
    return [
        *([ema] if ema else []),
        _fold_score(task, plan, metric),
        best,
        *([EpochSnapshots(task.fold_dir, average, plan.network,
                          start=lambda: first_epoch if resume() is None else resume())] if average else []),
        keras.callbacks.EarlyStopping(monitor="val_score", mode=mode, patience=task.model.patience),
        ResumableCSVLogger(task.fold_dir / LOG, backup, first_epoch),
        backup,
        *callbacks,
    ]
