"""Networks: ``backbone -> pooling -> head``, and how they are compiled.
Keras 3 only (``keras``, ``keras.ops``), no ``tf.*``.

The head ends in a float32 dense layer (softmax, or sigmoid for multilabel), so mixed precision
never rounds the probabilities. An ordinal task's head is one linear unit, the grade's score,
trained by mean squared error. A regression's head is one linear unit too, followed by
:class:`Unstandardise`: the unit learns the target standardised by the fold's training rows
(MSE or Huber on that scale), and the network outputs the target on its own scale, the mean and
standard deviation held as weights in ``best.weights.h5``.
"""

from __future__ import annotations

from typing import Sequence

import keras

from foldstack import backbones
from foldstack.core.config import ModelConfig, PhaseRecipe, hw
from foldstack.training.fold_task import FoldTask
from foldstack.training.losses import create_loss
from foldstack.training.optim import create_optimizer, leaf_layers

_ACTIVATIONS = {"multiclass": "softmax", "binary": "softmax", "multilabel": "sigmoid", "ordinal": "linear",
                "regression": "linear"}


class Unstandardise(keras.layers.Layer):
    """``x * std + mean``: a standardised prediction back on the target's scale. ``mean`` and
    ``std`` are weights that never train, so they are saved with the network and a rebuilt
    network (predict, Grad-CAM) reads them from its weights file."""

    def __init__(self, mean: float = 0.0, std: float = 1.0, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.initial = (float(mean), float(std))

    def build(self, input_shape):
        mean, std = self.initial
        self.mean = self.add_weight(shape=(), initializer=keras.initializers.Constant(mean), trainable=False,
                                    name="mean")
        self.std = self.add_weight(shape=(), initializer=keras.initializers.Constant(std), trainable=False,
                                   name="std")

    def call(self, x):
        return x * self.std + self.mean


class StandardisedLoss(keras.losses.Loss):
    """A regression's loss (``mse``; ``huber`` at ``delta``) on targets and predictions both
    standardised by the fold's ``mean`` and ``std``."""

    def __init__(self, kind: str, mean: float, std: float, delta: float = 1.0):
        super().__init__(name=f"standardised_{kind}")
        self.kind, self.mean, self.std, self.delta = kind, mean, std, delta

    def call(self, y_true, y_pred):
        y_true = (keras.ops.cast(y_true, "float32") - self.mean) / self.std
        y_pred = (keras.ops.cast(y_pred, "float32") - self.mean) / self.std
        if self.kind == "huber":
            return keras.losses.huber(y_true, y_pred, delta=self.delta)
        return keras.losses.mean_squared_error(y_true, y_pred)


def create_backbone(model: ModelConfig, any_size: bool = False) -> keras.Model:
    """The backbone at the model's size (``any_size``: at every size, for progressive resizing);
    cut at ``cut_layer`` in every regime that names one, ``partial`` at its deepest cut point by
    default (the early stages alone of a pretrained backbone: small images reach its last stages
    as a 1x1 map, and the cut network trains in a fraction of the time)."""
    cut = model.cut_layer
    if cut is None and model.regime == "partial":
        cut = backbones.get(model.backbone).cut_layers[-1]
    shape = (None, None) if any_size else hw(model.image_size)
    return backbones.create(model.backbone, weights=model.weights, include_top=False,
                            input_shape=(*shape, model.input_channels), cut_at=cut, drop_path=model.drop_path,
                            to_rgb=model.to_rgb)


#: The pooling layer's name in every image network (what ``worker.embed`` reads the features of).
POOLED = "pooled"

#: The table columns' input (``meta``), beside the ``image``.
META = "meta"

#: The meta branch's units: a small dense layer, as the SIIM-ISIC winners' meta branch before
#: their features joined (theirs: 512 then 128 units, github.com/haqishen/SIIM-ISIC-Melanoma-Classification-1st-Place-Solution).
META_UNITS = 32


class MetaJoin(keras.layers.Layer):
    """The encoded table columns (``training.meta``) through a small dense branch, concatenated
    to the pooled image features: one layer taking ``[pooled, meta]``, so the layers after the
    pooling stay a chain that Grad-CAM runs one by one."""

    def __init__(self, units: int = META_UNITS, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dense = keras.layers.Dense(units, activation="relu", name="meta_dense")

    def build(self, input_shape):
        self.dense.build(input_shape[1])

    def call(self, inputs):
        pooled, meta = inputs
        return keras.ops.concatenate([pooled, keras.ops.cast(self.dense(meta), pooled.dtype)], axis=-1)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class GeM(keras.layers.Layer):
    """Generalized-mean pooling (Radenović et al. 2018): ``mean(x^p)^(1/p)`` over the map, ``p``
    learnt (from 3; 1 is average pooling, large ``p`` tends to max pooling)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.initial_p, self.eps = p, eps

    def build(self, input_shape):
        self.p = self.add_weight(name="p", shape=(), initializer=keras.initializers.Constant(self.initial_p))

    def call(self, x):
        # In float32 whatever the policy: x**3 of a float16 activation overflows past 40.
        dtype, x = x.dtype, keras.ops.cast(x, "float32")
        p = keras.ops.cast(self.p, "float32")
        x = keras.ops.power(keras.ops.maximum(x, self.eps), p)
        return keras.ops.cast(keras.ops.power(keras.ops.mean(x, axis=(1, 2)), 1.0 / p), dtype)

    def get_config(self):
        return {**super().get_config(), "p": self.initial_p, "eps": self.eps}


class AvgMax(keras.layers.Layer):
    """Average and max pooling concatenated: one layer, so the network stays a chain (Grad-CAM
    runs the layers after the backbone one by one)."""

    def call(self, x):
        return keras.ops.concatenate([keras.ops.mean(x, axis=(1, 2)), keras.ops.max(x, axis=(1, 2))], axis=-1)


def pool(feature_map, kind: str | None):
    """One vector per image from the backbone's feature map: ``avg`` (the default), ``gem``,
    ``max``, or ``avgmax`` (both, concatenated)."""
    if kind == "gem":
        return GeM(name=POOLED)(feature_map)
    if kind == "max":
        return keras.layers.GlobalMaxPooling2D(name=POOLED)(feature_map)
    if kind == "avgmax":
        return AvgMax(name=POOLED)(feature_map)
    return keras.layers.GlobalAveragePooling2D(name=POOLED)(feature_map)


def head(features, model: ModelConfig, n_classes: int, task: str, dense_units: Sequence[int] = (),
         target_scale: tuple[float, float] = (0.0, 1.0)):
    """``dense_units`` hidden layers, each followed by dropout, then the classifier; a head
    without hidden layers has one dropout before the classifier (never two in a row). A
    regression's output is put back on the target's scale (``target_scale``: mean, std)."""
    x = features
    for units in dense_units:
        x = keras.layers.Dense(units, activation="relu")(x)
        x = keras.layers.Dropout(model.dropout)(x)
    if not dense_units:
        x = keras.layers.Dropout(model.dropout)(x)
    units = 1 if task in ("ordinal", "regression") else n_classes
    output = keras.layers.Dense(units, activation=_ACTIVATIONS[task], dtype="float32", name="probabilities")(x)
    return Unstandardise(*target_scale, name="unstandardise")(output) if task == "regression" else output


def build_network(task: FoldTask, backbone: keras.Model, frozen_statistics: bool,
                  dense_units: Sequence[int] = (), any_size: bool = False, meta_width: int = 0) -> keras.Model:
    """The backbone, pooled, under a head. ``frozen_statistics`` calls the backbone with
    ``training=False``: its BatchNorm stays in inference mode even once it is unfrozen, so a
    few small batches never overwrite the ImageNet statistics (the keras-io recipe).
    ``any_size``: the input takes images of any size (the backbone must too), which global
    pooling makes one vector each; the weights are the same as at a fixed size. It never
    augments: augmentation on the device wraps it (``device_augment.training_network``).
    ``meta_width``: the encoded table columns' width (``training.meta.MetaScale.width``); with
    them the network takes ``{"image": ..., "meta": ...}`` and :class:`MetaJoin` puts them
    beside the pooled features."""
    shape = (None, None) if any_size else hw(task.size)
    image = keras.Input((*shape, task.model.input_channels), name="image")
    x = backbone(image, training=False) if frozen_statistics else backbone(image)
    x = pool(x, task.model.pooling)
    inputs = image
    if meta_width:
        meta = keras.Input((meta_width,), name=META)
        x = MetaJoin(name="meta_join")([x, meta])
        inputs = {"image": image, META: meta}
    return keras.Model(inputs, head(x, task.model, task.n_classes, task.task, dense_units, task.target_scale),
                       name=task.model.name)


def features_network(task: FoldTask, n_features: int) -> keras.Model:
    """A head alone, on pooled backbone features (the ``features`` regime)."""
    inputs = keras.Input((n_features,), name="features")
    return keras.Model(inputs, head(inputs, task.model, task.n_classes, task.task, task.model.head_units,
                                    task.target_scale), name=task.model.name)


def compile_for(task: FoldTask, network: keras.Model, lr: float, epochs: int, steps_per_epoch: int,
                jit_compile: bool | str = False, ema_step: int = 0, recipe: PhaseRecipe | None = None,
                lr_scales: dict[int, float] | None = None) -> None:
    """The phase's optimizer on its schedule (``optim.create_optimizer``: AdamW on a cosine with
    one epoch of warm-up by default; ``recipe`` the phase's own, ``lr_scales`` its layer decay)
    and the model's loss (``losses.create_loss``); one step per ``accumulate`` batches where the
    model says (``create_optimizer``). With the model's ``ema`` the optimizer keeps a
    warmed-up moving average of the weights (``ema_step``: the fold's training steps before this
    phase), which ``callbacks.EMAWeights`` puts in the network for validation and checkpoints."""
    optimizer = create_optimizer(task.model, recipe or PhaseRecipe(), lr, epochs, steps_per_epoch,
                                 lr_scales=lr_scales, ema_step=ema_step)
    network.compile(optimizer=optimizer, loss=_loss(task), jit_compile=jit_compile)
    # Its variables now, not in the first step: TensorFlow would otherwise trace the training step
    # twice per fit (once creating them, once using them), seconds a fold.
    network.optimizer.build(network.trainable_variables)


def _loss(task: FoldTask) -> keras.losses.Loss:
    """The model's loss (``losses.create_loss``); a regression's on the standardised target
    (:class:`StandardisedLoss`)."""
    if task.task != "regression":
        return create_loss(task.model, task.task)
    target = task.target
    return StandardisedLoss(target.loss if target else "mse", *task.target_scale,
                            delta=target.huber_delta if target else 1.0)


def set_trainable(backbone: keras.Model, which: str | int | None) -> None:
    """What of the backbone trains: nothing (None), ``"all"``, the top ``N`` layers, or every
    layer from a named one on (a layer, or a nested block such as a hub backbone's ``P4``:
    from its first layer on)."""
    backbone.trainable = which is not None
    if which is None or which == "all":
        return
    layers = leaf_layers(backbone)
    if isinstance(which, int):
        start = max(0, len(layers) - which)
    else:
        starts = _first_leaves(backbone, {})
        if which not in starts:
            raise ValueError(f"unfreeze = {which!r}: no such layer in the backbone")
        start = layers.index(starts[which])
    for layer in layers[:start]:
        layer.trainable = False


def _first_leaves(model: keras.Model, found: dict[str, keras.layers.Layer]) -> dict[str, keras.layers.Layer]:
    """Every layer's and nested model's name -> its first leaf layer (the first of a name wins)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            leaves = leaf_layers(layer)
            if leaves:
                found.setdefault(layer.name, leaves[0])
            _first_leaves(layer, found)
        else:
            found.setdefault(layer.name, layer)
    return found
