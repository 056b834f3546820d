"""The ``features`` regime's cache: pooled backbone features of every image and TTA view,
computed once per backbone, size, views and images (see ``fold_task.features_key``), each split
(``train``, ``test``) under a key of its own, so a new test set leaves the training images'
features in place."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from foldstack.core.config import AugmentConfig, ModelConfig, hw
from foldstack.core.files import atomic_path, has_key, rekeyed
from foldstack.training.loader import predict, view_batches
from foldstack.training.network import create_backbone


class FeatureCache:
    """Features stored as ``<folder>/<split>-view<k>.npy`` beside ``<split>.key``, the key that
    made them."""

    def __init__(self, views: dict[str, list[np.ndarray]]):
        self._views = views

    def views(self, split: str) -> list[np.ndarray]:
        """One ``(n_images, n_features)`` array per TTA view; the first view is the plain image."""
        return self._views[split]

    @classmethod
    def load(cls, folder: Path, splits: list[str], n_views: int) -> FeatureCache:
        return cls({split: [np.load(folder / f"{split}-view{v}.npy") for v in range(n_views)] for split in splits})

    @staticmethod
    def build(model: ModelConfig, images: dict[str, np.ndarray], augment: AugmentConfig, folder: Path,
              keys: dict[str, str], workers: int = 1) -> None:
        """Run the backbone over every image and view of each split unless ``folder`` already
        holds that split's features under ``keys[split]``."""
        stale = {split: array for split, array in images.items() if not has_key(_key_file(folder, split), keys[split])}
        if not stale:
            return
        extractor = _extractor(model)
        for split, array in stale.items():
            with rekeyed(_key_file(folder, split), keys[split]):
                for v, features in enumerate(_views(extractor, model, array, augment, workers)):
                    with atomic_path(folder / f"{split}-view{v}.npy") as tmp:
                        with open(tmp, "wb") as handle:
                            np.save(handle, features)
        keras.backend.clear_session()


def extract(model: ModelConfig, images: np.ndarray, augment: AugmentConfig, workers: int = 1) -> list[np.ndarray]:
    """The pooled backbone features of ``images``, one array per TTA view, cached nowhere (new
    images predicted once)."""
    return _views(_extractor(model), model, images, augment, workers)


def _key_file(folder: Path, split: str) -> Path:
    return folder / f"{split}.key"


def _extractor(model: ModelConfig) -> keras.Model:
    inputs = keras.Input((*hw(model.image_size), model.input_channels), name="image")
    pooled = keras.layers.GlobalAveragePooling2D()(create_backbone(model)(inputs, training=False))
    return keras.Model(inputs, pooled)


def _views(extractor: keras.Model, model: ModelConfig, images: np.ndarray, augment: AugmentConfig,
           workers: int) -> list[np.ndarray]:
    index = np.arange(len(images))
    return [predict(extractor, view_batches(images, index, augment, view, model.batch_size, workers, model)).astype(np.float32)
            for view in augment.tta]
