"""Networks: ``backbone -> pooling -> head``, and how they are compiled.
Keras 3 only (``keras``, ``keras.ops``), no ``tf.*``.

The head ends in a float32 dense layer (softmax, or sigmoid for multilabel), so mixed precision
never rounds the probabilities. An ordinal task's head is one linear unit, the grade's score,
trained by mean squared error.
"""

from __future__ import annotations

from typing import Sequence

import keras

from foldstack import backbones
from foldstack.core.config import ModelConfig, PhaseRecipe
from foldstack.training.fold_task import FoldTask
from foldstack.training.losses import create_loss
from foldstack.training.optim import create_optimizer, leaf_layers

_ACTIVATIONS = {"multiclass": "softmax", "binary": "softmax", "multilabel": "sigmoid", "ordinal": "linear"}


def create_backbone(model: ModelConfig, any_size: bool = False) -> keras.Model:
    """The backbone at the model's size (``any_size``: at every size, for progressive resizing);
    cut at ``cut_layer`` (or its deepest cut point) for ``partial``."""
    cut = None
    if model.regime == "partial":
        cut = model.cut_layer or backbones.get(model.backbone).cut_layers[-1]
    size = None if any_size else model.image_size
    return backbones.create(model.backbone, weights=model.weights, include_top=False,
                            input_shape=(size, size, 3), cut_at=cut, drop_path=model.drop_path)


#: The pooling layer's name in every image network (what ``worker.embed`` reads the features of).
POOLED = "pooled"


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
    size = None if any_size else task.size
    inputs = keras.Input((size, size, 3), name="image")
    x = backbone(inputs, training=False) if frozen_statistics else backbone(inputs)
    x = pool(x, task.model.pooling)
    return keras.Model(inputs, head(x, task.model, task.n_classes, task.task, dense_units), name=task.model.name)


def features_network(task: FoldTask, n_features: int) -> keras.Model:
    """A head alone, on pooled backbone features (the ``features`` regime)."""
    inputs = keras.Input((n_features,), name="features")
    return keras.Model(inputs, head(inputs, task.model, task.n_classes, task.task, task.model.head_units),
                       name=task.model.name)


def compile_for(task: FoldTask, network: keras.Model, lr: float, epochs: int, steps_per_epoch: int,
                jit_compile: bool | str = False, ema_step: int = 0, recipe: PhaseRecipe | None = None,
                lr_scales: dict[int, float] | None = None) -> None:
    """The phase's optimizer on its schedule (``optim.create_optimizer``: AdamW on a cosine with
    one epoch of warm-up by default; ``recipe`` the phase's own, ``lr_scales`` its layer decay)
    and the model's loss (``losses.create_loss``). With the model's ``ema`` the optimizer keeps a
    warmed-up moving average of the weights (``ema_step``: the fold's training steps before this
    phase), which ``callbacks.EMAWeights`` puts in the network for validation and checkpoints."""
    optimizer = create_optimizer(task.model, recipe or PhaseRecipe(), lr, epochs, steps_per_epoch,
                                 lr_scales=lr_scales, ema_step=ema_step)
    network.compile(optimizer=optimizer, loss=create_loss(task.model, task.task), jit_compile=jit_compile)
    # Its variables now, not in the first step: TensorFlow would otherwise trace the training step
    # twice per fit (once creating them, once using them), seconds a fold.
    network.optimizer.build(network.trainable_variables)


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
