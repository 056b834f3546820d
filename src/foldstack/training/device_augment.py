"""Augmentation on the device: the train transforms' Keras forms (``training.augment.device_steps``)
as one layer at the network's input, so they run inside the compiled training step and the
loader only gathers uint8 rows of the image cache.

The layer transforms only in training (``fit``'s step calls the network with ``training=True``);
in ``predict`` and ``evaluate`` it hands the images on untouched, so validation and the TTA
views are never randomly augmented. It holds no weights: a network trained with it loads its
weights file into the same network built without it (prediction, Grad-CAM).
"""

from __future__ import annotations

import keras

from foldstack.training.augment import UNCOMPILED, DeviceStep, device_steps

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
        self.step_layers = [[getattr(keras.layers, cls)(**arguments, dtype="float32") for cls, arguments in step.layers]
                            for step in self.steps]
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
