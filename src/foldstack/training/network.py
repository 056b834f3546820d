"""Networks: ``backbone -> global average pooling -> head``, and how they are compiled.
Keras 3 only (``keras``, ``keras.ops``), no ``tf.*``.

The head ends in a float32 dense layer (softmax, or sigmoid for multilabel), so mixed precision
never rounds the probabilities. An ordinal task's head is one linear unit, the grade's score,
trained by mean squared error.
"""

from __future__ import annotations

from typing import Sequence

import keras

from foldstack import backbones
from foldstack.core.config import ModelConfig, hw
from foldstack.training.fold_task import FoldTask

_ACTIVATIONS = {"multiclass": "softmax", "binary": "softmax", "multilabel": "sigmoid", "ordinal": "linear"}


def create_backbone(model: ModelConfig, any_size: bool = False) -> keras.Model:
    """The backbone at the model's size (``any_size``: at every size, for progressive resizing);
    cut at ``cut_layer`` (or its deepest cut point) for ``partial``."""
    cut = None
    if model.regime == "partial":
        cut = model.cut_layer or backbones.get(model.backbone).cut_layers[-1]
    shape = (None, None) if any_size else hw(model.image_size)
    return backbones.create(model.backbone, weights=model.weights, include_top=False,
                            input_shape=(*shape, 3), cut_at=cut)


def head(features, model: ModelConfig, n_classes: int, task: str, dense_units: Sequence[int] = ()):
    """``dense_units`` hidden layers, each followed by dropout, then the classifier; a head
    without hidden layers has one dropout before the classifier (never two in a row)."""
    x = features
    for units in dense_units:
        x = keras.layers.Dense(units, activation="relu")(x)
        x = keras.layers.Dropout(model.dropout)(x)
    if not dense_units:
        x = keras.layers.Dropout(model.dropout)(x)
    units = 1 if task == "ordinal" else n_classes
    return keras.layers.Dense(units, activation=_ACTIVATIONS[task], dtype="float32", name="probabilities")(x)


def build_network(task: FoldTask, backbone: keras.Model, frozen_statistics: bool,
                  dense_units: Sequence[int] = (), any_size: bool = False) -> keras.Model:
    """The backbone, pooled, under a head. ``frozen_statistics`` calls the backbone with
    ``training=False``: its BatchNorm stays in inference mode even once it is unfrozen, so a
    few small batches never overwrite the ImageNet statistics (the keras-io recipe).
    ``any_size``: the input takes images of any size (the backbone must too), which global
    pooling makes one vector each; the weights are the same as at a fixed size. It never
    augments: augmentation on the device wraps it (``device_augment.training_network``)."""
    shape = (None, None) if any_size else hw(task.size)
    inputs = keras.Input((*shape, 3), name="image")
    x = backbone(inputs, training=False) if frozen_statistics else backbone(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, head(x, task.model, task.n_classes, task.task, dense_units), name=task.model.name)


def features_network(task: FoldTask, n_features: int) -> keras.Model:
    """A head alone, on pooled backbone features (the ``features`` regime)."""
    inputs = keras.Input((n_features,), name="features")
    return keras.Model(inputs, head(inputs, task.model, task.n_classes, task.task), name=task.model.name)


class AdamW(keras.optimizers.AdamW):
    """Keras's AdamW whose moving average of the weights (``use_ema``) warms up and goes on
    across phases.

    Keras's own average has no warm-up: it is the weights of the first step, then moves at
    ``ema_momentum`` (0.999: a few hundred steps later most of it is still that first step's,
    a near-random model on small data), and it starts again in every phase's optimizer. Here
    the average starts from the weights it is built on and the momentum of step ``t`` (counted
    from the fold's first step: ``ema_step`` steps ran in earlier phases) is
    ``min(ema_momentum, (1 + t) / (10 + t))``, as in TF-Models' and timm's EMA. A phase's
    ``fit`` ends with the average in the network (Keras's finalisation), so the next phase's
    optimizer, built on those weights, carries it on.
    """

    def __init__(self, *args, ema_step: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.ema_step = ema_step

    def build(self, variables):
        super().build(variables)
        if self.use_ema:
            for variable, average in zip(variables, self._model_variables_moving_average):
                average.assign(variable)

    def _update_model_variables_moving_average(self, trainable_variables):
        step = keras.ops.cast(self.iterations, "float32") + float(self.ema_step)
        momentum = keras.ops.minimum(self.ema_momentum, (1.0 + step) / (10.0 + step))
        for variable, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is not None:
                kept = keras.ops.cast(momentum, variable.dtype)
                average.assign(kept * average + (1 - kept) * variable)


class PerUpdate(keras.optimizers.schedules.LearningRateSchedule):
    """A schedule counted in optimizer updates under gradient accumulation: Keras (3.15) asks the
    schedule at every batch's count, so ``accumulate`` batches of B would otherwise step
    through it ``accumulate`` times as fast as one batch of ``accumulate`` x B."""

    def __init__(self, schedule: keras.optimizers.schedules.LearningRateSchedule, accumulate: int):
        self.schedule = schedule
        self.accumulate = accumulate

    def __call__(self, step):
        return self.schedule(step // self.accumulate)

    def get_config(self) -> dict:
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule), "accumulate": self.accumulate}


def compile_for(task: FoldTask, network: keras.Model, lr: float, epochs: int, steps_per_epoch: int,
                jit_compile: bool | str = False, ema_step: int = 0) -> None:
    """AdamW on a cosine schedule with one epoch of linear warm-up; loss by task; one step per
    ``accumulate`` batches (Keras's ``gradient_accumulation_steps``) where the model says. With the
    model's ``ema``, the optimizer keeps a moving average of the weights (:class:`AdamW`;
    ``ema_step``: the fold's training steps before this phase), which ``callbacks.EMAWeights``
    puts in the network for validation and checkpoints."""
    # Under the model's ``accumulate`` the schedule and the EMA count the steps the optimizer
    # applies, one per ``accumulate`` batches (:class:`PerUpdate`).
    accumulate = task.model.accumulate or 1
    steps_per_epoch, ema_step = max(1, steps_per_epoch // accumulate), ema_step // accumulate
    total = max(1, epochs * steps_per_epoch)
    warmup = min(steps_per_epoch, total // 2)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr * 0.01, decay_steps=max(1, total - warmup), alpha=0.01,
        warmup_target=lr, warmup_steps=warmup)
    ema = task.model.ema
    optimizer = AdamW(PerUpdate(schedule, accumulate) if accumulate > 1 else schedule, weight_decay=task.model.weight_decay, use_ema=ema is not None,
                      ema_momentum=ema.decay if ema else 0.99, ema_step=ema_step,
                      gradient_accumulation_steps=task.model.accumulate)
    network.compile(optimizer=optimizer, loss=_loss(task), jit_compile=jit_compile)
    # Its variables now, not in the first step: TensorFlow would otherwise trace the training step
    # twice per fit (once creating them, once using them), seconds a fold.
    network.optimizer.build(network.trainable_variables)


def _loss(task: FoldTask) -> keras.losses.Loss:
    """Cross-entropy on probabilities; an ordinal score's squared error to the grade."""
    if task.task == "ordinal":
        return keras.losses.MeanSquaredError()
    loss_type = keras.losses.BinaryCrossentropy if task.task == "multilabel" else keras.losses.CategoricalCrossentropy
    return loss_type(label_smoothing=task.model.label_smoothing)


def set_trainable(backbone: keras.Model, which: str | int | None) -> None:
    """What of the backbone trains: nothing (None), ``"all"``, the top ``N`` layers, or every
    layer from a named one on."""
    backbone.trainable = which is not None
    if which is None or which == "all":
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
