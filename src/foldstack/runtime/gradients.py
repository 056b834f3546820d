"""Gradients of a Keras computation with respect to its input: the one place that knows how
each backend differentiates.

Keras 3 has no backend-neutral gradient call (keras-team/keras#19220, #20760: "use backend
specific APIs like ``tf.GradientTape`` or ``jax.grad``"), so this module dispatches on
``keras.config.backend()`` as :mod:`foldstack.runtime.device` does for GPUs; everything that
calls it stays in ``keras.ops``.
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np


def input_gradient(function: Callable, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``function(x)`` (a tensor of per-row scores, shape ``(n,)``) and the gradient of its sum
    with respect to ``x``, both as numpy arrays.

    Rows never mix inside ``function`` (a network in inference mode), so the gradient of the sum
    holds each row's own gradient.
    """
    backend = keras.config.backend()
    x = np.asarray(x, dtype=np.float32)
    if backend == "tensorflow":
        import tensorflow as tf

        inputs = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            scores = function(inputs)
            total = tf.reduce_sum(scores)  # inside the tape, or it is not recorded
        return scores.numpy(), tape.gradient(total, inputs).numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def total(value):
            scores = function(value)
            return jnp.sum(scores), scores

        (_, scores), grad = jax.value_and_grad(total, has_aux=True)(jnp.asarray(x))
        return np.asarray(scores), np.asarray(grad)
    if backend == "torch":
        import torch

        inputs = torch.tensor(x, requires_grad=True, device=keras.ops.convert_to_tensor(0.0).device)
        scores = function(inputs)
        scores.sum().backward()
        return scores.detach().cpu().numpy(), inputs.grad.detach().cpu().numpy()
    raise NotImplementedError(f"gradients under the {backend!r} backend")
