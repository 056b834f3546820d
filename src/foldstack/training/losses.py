"""A fold's loss, from the model's ``loss`` (Keras's own losses where they exist). Keras 3 only.

The network outputs probabilities (softmax, or sigmoid for multilabel), so every loss here takes
probabilities, not logits.
"""

from __future__ import annotations

import keras
from keras import ops

from foldstack.core.config import CrossEntropyLoss, FocalLoss, ModelConfig, Poly1Loss


def create_loss(model: ModelConfig, task: str) -> keras.losses.Loss:
    """The model's loss for ``task``: an ordinal score's squared error to its grade; without a
    ``loss``, cross-entropy with the model's ``label_smoothing`` (binary for multilabel)."""
    if task == "ordinal":
        return keras.losses.MeanSquaredError()
    spec = model.loss or CrossEntropyLoss(type="ce", label_smoothing=model.label_smoothing)
    multilabel = task == "multilabel"
    if isinstance(spec, FocalLoss):
        if multilabel:
            return keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=spec.alpha, gamma=spec.gamma)
        return keras.losses.CategoricalFocalCrossentropy(alpha=spec.alpha, gamma=spec.gamma)
    if isinstance(spec, Poly1Loss):
        return Poly1(epsilon=spec.epsilon, label_smoothing=spec.label_smoothing, multilabel=multilabel)
    if spec.type == "bce" or multilabel:
        return keras.losses.BinaryCrossentropy(label_smoothing=spec.label_smoothing)
    return keras.losses.CategoricalCrossentropy(label_smoothing=spec.label_smoothing)


class Poly1(keras.losses.Loss):
    """Poly-1 (Leng et al., "PolyLoss", ICLR 2022): cross-entropy plus ``epsilon * (1 - p_t)``,
    ``p_t`` the probability given to the (smoothed) target; per class column for multilabel."""

    def __init__(self, epsilon: float = 1.0, label_smoothing: float = 0.0, multilabel: bool = False,
                 name: str = "poly1", **kwargs):
        super().__init__(name=name, **kwargs)
        self.epsilon, self.label_smoothing, self.multilabel = epsilon, label_smoothing, multilabel
        cross_entropy = keras.losses.binary_crossentropy if multilabel else keras.losses.categorical_crossentropy
        self._cross_entropy = cross_entropy

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        cross_entropy = self._cross_entropy(y_true, y_pred, label_smoothing=self.label_smoothing)
        if self.multilabel:
            p_t = ops.mean(y_true * y_pred + (1 - y_true) * (1 - y_pred), axis=-1)
        else:
            p_t = ops.sum(y_true * y_pred, axis=-1)
        return cross_entropy + self.epsilon * (1 - p_t)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "label_smoothing": self.label_smoothing,
                "multilabel": self.multilabel}
