"""Grad-CAM (Selvaraju et al., 2017): where a fold's network looks when it scores a class.

The network is split at the backbone's last feature map ``A``: the heatmap of class ``c`` is
``relu(sum_k w_k A_k)`` with ``w_k`` the spatial mean of ``d logit_c / d A_k``. Logits, not
probabilities: a confident softmax saturates and its gradient vanishes.

Every regime is explained through its backbone: the image regimes' networks hold it; the
``features`` regime trained a head on pooled features, so the backbone it cached them with is
built again here (the same pretrained weights) and the head put back on its pooled output.
Keras only; the one backend-specific step, the gradient, is :mod:`foldstack.runtime.gradients`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np
from keras import ops

from foldstack.core.errors import DataError
from foldstack.runtime.gradients import input_gradient
from foldstack.training.augment import compose, crop
from foldstack.training.fold_task import BEST, FoldTask
from foldstack.training.meta import MetaRows, fold_inputs, width
from foldstack.training.network import MetaJoin, Unstandardise, create_backbone, features_network
from foldstack.training.regimes import image_network, without_pretrained


@dataclass(frozen=True)
class Explanation:
    """Grad-CAM of a batch of images.

    Attributes:
        heatmaps: ``(n, size, size)`` float32 in [0, 1], at the model's input size; 1 is where
            the explained class's evidence is strongest.
        classes: ``(n,)`` the class index each heatmap explains.
        proba: ``(n, n_classes)`` the network's probabilities.
    """

    heatmaps: np.ndarray
    classes: np.ndarray
    proba: np.ndarray


@dataclass(frozen=True)
class SplitNetwork:
    """A fold's network as ``feature_map(images) -> A`` then ``logits(A, meta)`` (``meta``: the
    images' encoded table columns, for a network that reads them; else None), and the head's
    activation."""

    feature_map: keras.Model
    logits: Callable
    activation: Callable


def load_fold_network(task: FoldTask) -> SplitNetwork:
    """The fold's trained network (``best.weights.h5`` in ``task.fold_dir``), split at the
    backbone's last feature map.

    Raises:
        DataError: the fold has no ``best.weights.h5``.
    """
    weights = task.fold_dir / BEST
    if not weights.is_file():
        raise DataError(f"{weights}: not found; train this fold first (make train)")
    if task.model.regime == "features":
        # The file holds the head alone: the backbone keeps its pretrained weights.
        backbone = create_backbone(task.model)
        head = features_network(task, backbone.output.shape[-1])
        head.load_weights(str(weights))
        layers = [keras.layers.GlobalAveragePooling2D(), *head.layers[1:]]
    else:
        network, backbone = image_network(without_pretrained(task), meta_width=width(task.model.meta, task.fold_dir))
        network.load_weights(str(weights))
        # build_network is a chain: input, backbone, pooling, head layers (MetaJoin among them
        # takes the table columns too; their input layer is no step of the chain).
        layers = [layer for layer in network.layers[network.layers.index(backbone) + 1:]
                  if not isinstance(layer, keras.layers.InputLayer)]
    *hidden, last = layers
    scale = None
    if isinstance(last, Unstandardise):  # a regression's value: the unit's, on the target's scale
        scale, (*hidden, last) = last, hidden
    activation = last.activation if scale is None else _on_scale(scale, last.activation)

    def logits(features, meta=None):
        x = features
        for layer in hidden:
            x = layer([x, ops.cast(meta, x.dtype)], training=False) if isinstance(layer, MetaJoin) else layer(x, training=False)
        return ops.matmul(x, ops.cast(last.kernel, x.dtype)) + ops.cast(last.bias, x.dtype)

    return SplitNetwork(feature_map=backbone, logits=logits, activation=activation)


def _on_scale(scale: Unstandardise, activation):
    """``activation`` then ``scale``: a standardised regression unit's output as the target."""
    return lambda logits: scale(activation(logits))


def gradcam(network: SplitNetwork, images: np.ndarray, class_index: np.ndarray | int | None = None,
            batch_size: int = 32, meta: np.ndarray | None = None) -> Explanation:
    """Grad-CAM heatmaps of ``images`` (``(n, size, size, 3)``, as the network takes them).

    Args:
        network: from :func:`load_fold_network`.
        images: the images, after the pipeline's ``valid`` transforms.
        class_index: the class to explain, one for all or one per image; None explains each
            image's predicted class.
        batch_size: images per backbone pass.
        meta: the images' encoded table columns, row for row (a network that reads them).
    """
    heatmaps, classes, probas = [], [], []
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start:start + batch_size], dtype=np.float32)
        features = ops.convert_to_numpy(network.feature_map(batch, training=False)).astype(np.float32)
        columns = None if meta is None else ops.convert_to_tensor(meta[start:start + batch_size])
        proba = ops.convert_to_numpy(network.activation(network.logits(features, columns)))
        if class_index is None:
            chosen = proba.argmax(axis=1)
        else:
            chosen = np.broadcast_to(np.asarray(class_index)[start:start + batch_size]
                                     if np.ndim(class_index) else class_index, (len(batch),))
        chosen = np.asarray(chosen, dtype=np.int32)

        def score(a, chosen=chosen, columns=columns):
            return ops.take_along_axis(network.logits(a, columns), ops.convert_to_tensor(chosen[:, None]), axis=1)[:, 0]

        _, grads = input_gradient(score, features)
        weights = grads.mean(axis=(1, 2), keepdims=True)  # (n, 1, 1, channels)
        cams = np.maximum((weights * features).sum(axis=-1), 0.0)
        heatmaps.append(_to_size(cams, batch.shape[1:3]))
        classes.append(chosen)
        probas.append(proba)
    return Explanation(np.concatenate(heatmaps), np.concatenate(classes), np.concatenate(probas))


def explain(task: FoldTask, images: np.ndarray, class_index: np.ndarray | int | None = None,
            meta: MetaRows | None = None) -> Explanation:
    """Grad-CAM of raw uint8 ``images`` (``(n, size, size, 3)``) by the fold ``task`` names:
    the pipeline's ``valid`` transforms first, then :func:`gradcam`; ``meta``: the images' table
    columns, row for row, encoded by the fold's saved scale (a model with ``meta``)."""
    transform = compose([*crop(task.model, train=False), *task.augment.valid])
    prepared = np.stack([transform(image=np.asarray(image))["image"] for image in images]) if len(images) else images
    return gradcam(load_fold_network(task), prepared, class_index, batch_size=task.model.batch_size,
                   meta=fold_inputs(task.model.meta, meta, task.fold_dir))


def _to_size(cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling to the image's size, then each map scaled to [0, 1]."""
    resized = ops.convert_to_numpy(ops.image.resize(cams[..., None], size, interpolation="bilinear"))[..., 0]
    peak = resized.max(axis=(1, 2), keepdims=True)
    return np.where(peak > 0, resized / np.where(peak > 0, peak, 1.0), 0.0).astype(np.float32)
