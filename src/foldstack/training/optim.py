"""The one optimizer factory every phase goes through (timm's ``create_optimizer_v2``: layer-wise
learning-rate decay is a parameter of the same function), and the learning-rate schedules.

A phase's recipe is the model's ``optimizer``, ``schedule`` and ``layer_decay``, with the
phase's own (``phases: {head: ..., unfrozen: ...}``) over them (:func:`phase_recipe`).
Keras 3 only.
"""

from __future__ import annotations

import math
import keras

from foldstack import backbones
from foldstack.core.config import ModelConfig, OptimizerConfig, PhaseRecipe, ScheduleConfig

#: onecycle starts at, and anneals to, the peak divided by these (fastai's and PyTorch's defaults).
ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 25.0, 1e4


def phase_recipe(model: ModelConfig, phase: str) -> PhaseRecipe:
    """The model's optimizer, schedule and layer decay, with what the phase sets over them."""
    own = (model.phases or {}).get(phase) or PhaseRecipe()
    return PhaseRecipe(optimizer=own.optimizer or model.optimizer, schedule=own.schedule or model.schedule,
                       layer_decay=own.layer_decay if own.layer_decay is not None else model.layer_decay)


class _PhaseOptimizer:
    """What every optimizer of a phase adds to Keras's (a mixin, first in the bases).

    * Layer decay: ``lr_scales`` maps ``id(variable)`` to its learning-rate factor, applied in
      ``update_step`` (Keras 3 has no per-variable learning rate); absent variables take 1.
    * The moving average of the weights (``use_ema``) warms up and goes on across phases.
      Keras's own has no warm-up: it is the weights of the first step, then moves at
      ``ema_momentum`` (0.999: a few hundred steps later most of it is still that first step's,
      a near-random model on small data), and it starts again in every phase's optimizer. Here
      the average starts from the weights it is built on and the momentum of step ``t``
      (counted from the fold's first step: ``ema_step`` steps ran in earlier phases) is
      ``min(ema_momentum, (1 + t) / (10 + t))``, as in TF-Models' and timm's EMA. A phase's
      ``fit`` ends with the average in the network (Keras's finalisation), so the next phase's
      optimizer, built on those weights, carries it on.
    """

    def __init__(self, *args, ema_step: int = 0, lr_scales: dict[int, float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.ema_step = ema_step
        self.lr_scales = lr_scales or {}
        self._scale_of: list[float] = []

    def build(self, variables):
        super().build(variables)
        # By the variable's index: TensorFlow's update step gets the backend's variable, not Keras's.
        self._scale_of = [self.lr_scales.get(id(variable), 1.0) for variable in variables]
        if self.use_ema:
            for variable, average in zip(variables, self._model_variables_moving_average):
                average.assign(variable)

    def update_step(self, gradient, variable, learning_rate):
        scale = self._scale_of[self._get_variable_index(variable)] if self._scale_of else 1.0
        if scale != 1.0:
            learning_rate = learning_rate * scale
        return super().update_step(gradient, variable, learning_rate)

    def _update_model_variables_moving_average(self, trainable_variables):
        step = keras.ops.cast(self.iterations, "float32") + float(self.ema_step)
        momentum = keras.ops.minimum(self.ema_momentum, (1.0 + step) / (10.0 + step))
        for variable, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is not None:
                kept = keras.ops.cast(momentum, variable.dtype)
                average.assign(kept * average + (1 - kept) * variable)


class AdamW(_PhaseOptimizer, keras.optimizers.AdamW):
    """Keras's AdamW with layer decay and the warmed-up EMA (:class:`_PhaseOptimizer`)."""


class SGD(_PhaseOptimizer, keras.optimizers.SGD):
    """Keras's SGD with layer decay and the warmed-up EMA (:class:`_PhaseOptimizer`)."""


class Lion(_PhaseOptimizer, keras.optimizers.Lion):
    """Keras's Lion with layer decay and the warmed-up EMA (:class:`_PhaseOptimizer`)."""


OPTIMIZERS = {"adamw": AdamW, "sgd": SGD, "lion": Lion}


def create_optimizer(model: ModelConfig, recipe: PhaseRecipe, lr: float, epochs: int, steps_per_epoch: int,
                     lr_scales: dict[int, float] | None = None, ema_step: int = 0) -> keras.optimizers.Optimizer:
    """A phase's optimizer on its schedule, with the model's weight decay and EMA.

    Args:
        model: the model (``weight_decay``, ``ema``).
        recipe: the phase's optimizer and schedule (:func:`phase_recipe`).
        lr: the phase's peak learning rate.
        epochs, steps_per_epoch: the phase's length, for the schedule.
        lr_scales: ``id(variable) -> factor`` (:func:`layer_scales`), or None.
        ema_step: the fold's training steps before this phase (the EMA's warm-up goes on).

    Under the model's ``accumulate`` (Keras's ``gradient_accumulation_steps``: one update per N
    batches, on their mean gradient) the schedule and the EMA count updates, not batches
    (:class:`PerUpdate`).
    """
    accumulate = model.accumulate or 1
    steps_per_epoch, ema_step = max(1, steps_per_epoch // accumulate), ema_step // accumulate
    spec = recipe.optimizer or OptimizerConfig()
    ema = model.ema
    options = {"weight_decay": model.weight_decay, "use_ema": ema is not None,
               "ema_momentum": ema.decay if ema else 0.99, "ema_step": ema_step, "lr_scales": lr_scales}
    if spec.type == "sgd":
        options.update(momentum=spec.momentum, nesterov=spec.nesterov)
    else:
        options.update({key: value for key, value in (("beta_1", spec.beta_1), ("beta_2", spec.beta_2))
                        if value is not None})
    schedule = create_schedule(recipe.schedule or ScheduleConfig(), lr, epochs, steps_per_epoch)
    if accumulate > 1:
        schedule = PerUpdate(schedule, accumulate)
        options["gradient_accumulation_steps"] = accumulate
    return OPTIMIZERS[spec.type](schedule, **options)


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


class StepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """A linear warm-up to ``peak`` over ``warmup`` steps, then ``peak`` times ``gamma`` every
    ``step_size`` steps."""

    def __init__(self, peak: float, warmup: int, step_size: int, gamma: float):
        self.peak, self.warmup, self.step_size, self.gamma = peak, warmup, step_size, gamma

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        rising = self.peak * (0.01 + 0.99 * step / max(1, self.warmup))
        drops = keras.ops.floor(keras.ops.maximum(step - self.warmup, 0.0) / self.step_size)
        return keras.ops.where(step < self.warmup, rising, self.peak * keras.ops.power(self.gamma, drops))

    def get_config(self):
        return {"peak": self.peak, "warmup": self.warmup, "step_size": self.step_size, "gamma": self.gamma}


def create_schedule(spec: ScheduleConfig, lr: float, epochs: int,
                    steps_per_epoch: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate of each of a phase's steps (see ``core.config.ScheduleConfig``).
    Keras's ``CosineDecay`` (and its warm-up) serves cosine, constant (``alpha=1``) and
    onecycle; step is :class:`StepDecay`."""
    total = max(1, epochs * steps_per_epoch)
    warmup = min(round(spec.warmup_epochs * steps_per_epoch), total // 2)
    if spec.type == "step":
        return StepDecay(lr, warmup, max(1, spec.step_epochs * steps_per_epoch), spec.gamma)
    start, alpha = lr * 0.01, {"cosine": 0.01, "constant": 1.0}.get(spec.type)
    if spec.type == "onecycle":
        start, alpha, warmup = lr / ONECYCLE_DIV, 1.0 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV), math.ceil(spec.pct_start * total)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=start, decay_steps=max(1, total - warmup), alpha=alpha,
        warmup_target=lr, warmup_steps=warmup)


def layer_scales(backbone: keras.Model | None, backbone_name: str, decay: float | None) -> dict[int, float] | None:
    """Layer-wise learning-rate decay: the head's weights at the phase's rate, the backbone's
    deepest block's at ``decay`` times it, the one below at ``decay**2``, down to the stem (as
    BEiT's and timm's ``param_groups_layer_decay``). The backbone's registry entry says how its
    layers group into blocks (``BackboneSpec.block_groups``, else ``BackboneSpec.blocks``).
    None without a decay or a backbone."""
    if decay is None or backbone is None or decay == 1.0:
        return None
    spec = backbones.get(backbone_name)
    if spec.block_groups is not None:  # blocks that are nested layers (KerasHub's): the family names them
        groups = spec.block_groups(backbone.layers[-1])
        blocked = [(layer, block) for block, (_, layers) in enumerate(groups) for layer in layers]
    else:  # every layer counts (an inception module ends at its weightless concatenation)
        layers = leaf_layers(backbone)
        blocked = list(zip(layers, spec.blocks([layer.name for layer in layers])))
    deepest = max((block for _, block in blocked), default=0)
    scales = {}
    for layer, block in blocked:
        for variable in layer.weights:
            scales[id(variable)] = decay ** (deepest + 1 - block)
    return scales


def leaf_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's layers in order, nested models opened."""
    leaves = []
    for layer in model.layers:
        leaves.extend(leaf_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return leaves
