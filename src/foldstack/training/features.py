"""The ``features`` regime's cache: pooled backbone features of every image and TTA view,
computed once per backbone, size, views and images (see ``fold_task.features_key``)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from foldstack.core.config import AugmentConfig, ModelConfig
from foldstack.core.files import atomic_path, write_text
from foldstack.training.loader import view_batches
from foldstack.training.network import create_backbone

KEY = "key.json"


class FeatureCache:
    """Features stored as ``<folder>/<split>-view<k>.npy`` beside the key that made them."""

    def __init__(self, views: dict[str, list[np.ndarray]]):
        self._views = views

    def views(self, split: str) -> list[np.ndarray]:
        """One ``(n_images, n_features)`` array per TTA view; the first view is the plain image."""
        return self._views[split]

    @classmethod
    def load(cls, folder: Path, splits: list[str], n_views: int) -> FeatureCache:
        return cls({split: [np.load(folder / f"{split}-view{v}.npy") for v in range(n_views)] for split in splits})

    @staticmethod
    def build(model: ModelConfig, images: dict[str, np.ndarray], augment: AugmentConfig, folder: Path, key: str,
              workers: int = 1) -> None:
        """Run the backbone over every image and view unless ``folder`` already holds ``key``'s features."""
        key_file = folder / KEY
        if key_file.exists() and key_file.read_text() == key:
            return
        key_file.unlink(missing_ok=True)  # the old features stop counting before any is replaced
        size = model.image_size
        inputs = keras.Input((size, size, 3), name="image")
        pooled = keras.layers.GlobalAveragePooling2D()(create_backbone(model)(inputs, training=False))
        extractor = keras.Model(inputs, pooled)
        for split, array in images.items():
            for v, view in enumerate(augment.tta):
                batches = view_batches(array, np.arange(len(array)), augment, view, model.batch_size, workers)
                with atomic_path(folder / f"{split}-view{v}.npy") as tmp:
                    with open(tmp, "wb") as handle:
                        np.save(handle, extractor.predict(batches, verbose=0).astype(np.float32))
        write_text(key_file, key)
        keras.backend.clear_session()
