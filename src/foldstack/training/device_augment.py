"""Augmentation on the device: the train transforms' Keras forms (``training.device_forms.device_steps``)
as one layer, and MixUp and CutMix of the batch's pixels as another, so they run inside the
compiled training step and the loader only gathers uint8 rows of the image cache (and, mixing,
draws the few numbers a batch is mixed by, and mixes its targets: ``training.batch_mix.BatchMix``).
The mixing layer's code mixes the pixels in the loader too, where the CPU augments
(:func:`loader_pixels`): one mixing of pixels, wherever it runs.

Both layers sit in the model ``fit`` trains, :func:`training_network`: the image (and the
mixing's inputs) through them, then the fold's plain network, whose layers it shares. The plain
network is the one that validates, checkpoints and predicts: it has one image input and never
augments, so its weights file loads into the network prediction and Grad-CAM build. The layers
transform only in training (``fit``'s step calls the model with ``training=True``).
"""

from __future__ import annotations

import inspect
import itertools

import keras
import numpy as np

from foldstack.training.batch_mix import MIX_INPUTS, Pixels
from foldstack.training.device_forms import UNCOMPILED, DeviceStep, device_steps

#: The layer's name in a network: how a test, or a reader of a model summary, finds it.
NAME = "device_augment"


class DeviceAugment(keras.layers.Layer):
    """Each :class:`DeviceStep` in order, applied to each image with the step's probability.

    A step's Keras layers transform the whole batch; a per-image draw then keeps the transformed
    image or the original, so an albumentations ``p`` holds exactly (for a flip, whose Keras
    layer flips half the images, the draw keeps ``p / 0.5`` of them). Pixels stay float32 (0-255)
    whatever the global precision policy: the backbone's own preprocessing comes after.
    """

    def __init__(self, steps: list[DeviceStep], seed: int | None = None, **kwargs):
        kwargs.setdefault("name", NAME)
        super().__init__(dtype="float32", **kwargs)
        self.steps = list(steps)
        # Each random Keras layer draws from a seed of its own, derived from ``seed``: unseeded, a
        # flip's or a rotation's draws would differ from run to run under the same fold seed.
        offsets = itertools.count(1)
        self.step_layers = [[_keras_layer(cls, arguments, None if seed is None else seed + next(offsets))
                             for cls, arguments in step.layers] for step in self.steps]
        self.seed_generator = keras.random.SeedGenerator(seed)
        if keras.config.backend() == "jax":
            # Keras marks its geometric layers as not XLA-compilable for every backend (TensorFlow's
            # kernels are not); under JAX they are jnp code that jit compiles, and a model with
            # one uncompilable layer would run its whole training step op by op.
            for layers in self.step_layers:
                for layer in layers:
                    layer.supports_jit = type(layer).__name__ not in UNCOMPILED

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layers in self.step_layers:
            for layer in layers:
                layer.build(shape)
                shape = tuple(layer.compute_output_shape(shape))

    def call(self, images, training=None):
        if not training:
            return images
        images = keras.ops.cast(images, "float32")
        for step, layers in zip(self.steps, self.step_layers):
            transformed = images
            for layer in layers:
                transformed = layer(transformed, training=True)
            keep = step.p / step.rate
            if keep < 1:
                draw = keras.random.uniform((keras.ops.shape(images)[0], 1, 1, 1), seed=self.seed_generator)
                transformed = keras.ops.where(draw < keep, transformed, images)
            images = transformed
        return images

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layers in self.step_layers:
            for layer in layers:
                shape = tuple(layer.compute_output_shape(shape))
        return shape


def device_augment(transforms: list[dict], seed: int | None = None) -> DeviceAugment | None:
    """The layer for a YAML list of train transforms; None when there is nothing to apply.

    Raises:
        ValueError: a transform has no device form; one line naming it.
    """
    steps = device_steps(transforms)
    return DeviceAugment(steps, seed) if steps else None


def _keras_layer(name: str, arguments: dict, seed: int | None) -> keras.layers.Layer:
    """``keras.layers.<name>(**arguments)`` in float32, given ``seed`` when it draws at random."""
    cls = getattr(keras.layers, name)
    if seed is not None and "seed" in inspect.signature(cls.__init__).parameters:
        arguments = {**arguments, "seed": seed}
    return cls(**arguments, dtype="float32")


class DeviceMix(keras.layers.Layer):
    """MixUp and CutMix of a batch's pixels as the loader drew them (``batch_mix.device_mix_inputs``):
    Keras's ``MixUp`` blends each image with its partner at its pixel weight (1: untouched), then
    Keras's ``CutMix`` pastes its partner's pixels in its box (empty: nothing). One path for every
    batch, MixUp's, CutMix's or neither, so the compiled step never branches on a tensor (a
    weight of 1 and an empty box give the image back exactly). Pixels stay float32.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("name", "device_mix")
        super().__init__(dtype="float32", **kwargs)
        self.mixup = keras.layers.MixUp(dtype="float32")
        self.cutmix = keras.layers.CutMix(dtype="float32")

    def build(self, images_shape, mix_shape=None):
        self.mixup.build(images_shape)
        self.cutmix.build(images_shape)

    def call(self, images, mix, training=None):
        if not training:
            return images
        return self.mix(images, mix)

    def mix(self, images, mix):
        """``images`` mixed as ``mix`` (:data:`MIX_INPUTS`) says, in training or not: the layer's
        work, which the loader calls too (stateless, so its threads share one layer)."""
        permutation, weight, box = (mix[name] for name in MIX_INPUTS)
        images = self.mixup.transform_images(keras.ops.cast(images, "float32"),
                                             {"mix_weight": weight, "permutation_order": permutation})
        return self.cutmix.transform_images(images, {"batch_masks": box_masks(keras.ops.shape(images), box),
                                                     "permutation_order": permutation})


def loader_pixels() -> Pixels:
    """The loader's pixel mixing, for ``BatchMix`` where the CPU augments: a batch's pixels mixed
    by :class:`DeviceMix`'s own code as its draws say, as float32 numpy."""
    layer = DeviceMix()
    return lambda images, mix: keras.ops.convert_to_numpy(layer.mix(images, mix)).astype(np.float32)


def box_masks(shape, boxes):
    """``(n, height, width, 1)`` booleans for images of ``shape`` ``(n, height, width, ...)``, true
    inside each image's ``(top, left, height, width)`` box."""
    boxes = keras.ops.convert_to_tensor(boxes, "int32")
    rows = keras.ops.arange(shape[1], dtype="int32")[None, :, None]
    cols = keras.ops.arange(shape[2], dtype="int32")[None, None, :]
    top, left, height, width = (boxes[:, i, None, None] for i in range(4))
    inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
    return inside[..., None]


def training_network(network: keras.Model, augment: DeviceAugment | None, mix: bool) -> keras.Model | None:
    """The model ``fit`` trains when the device augments or mixes: the ``image`` through
    ``augment``, then (``mix``) :class:`DeviceMix` with the batch's :data:`MIX_INPUTS`, then
    ``network``, whose layers (and so weights) it shares. None when there is neither."""
    if augment is None and not mix:
        return None
    # The network's image input (named "image" where it has others: meta's table columns).
    shapes = {tensor.name: tuple(tensor.shape) for tensor in network.inputs}
    first = "image" if "image" in shapes else next(iter(shapes))
    image = keras.Input(shapes.pop(first)[1:], name="image")
    x = augment(image) if augment is not None else image
    inputs = image
    if mix:
        params = {name: keras.Input(shape, dtype=dtype, name=name) for name, (shape, dtype) in MIX_INPUTS.items()}
        x = DeviceMix()(x, params)
        inputs = {"image": image, **params}
    if shapes:  # the table columns (meta) go to the network as they are
        others = {name: keras.Input(shape[1:], name=name) for name, shape in shapes.items()}
        inputs = {**(inputs if isinstance(inputs, dict) else {"image": image}), **others}
        x = {"image": x, **others}
    return keras.Model(inputs, network(x), name=f"{network.name}_on_device")
