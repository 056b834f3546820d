"""``models/<model>/reference.npz``: how the training images look to a trained model, so that
``foldstack predict --images`` can name the images unlike them.

An image is described by what the model's first fold feeds its head (the pooled features), L2
normalised; its distance to the training images is the distance to its ``k``-th nearest training
image (the deep nearest-neighbour test of Sun et al., 2022). The bank holds the images fold 0
trained on; the threshold is Tukey's far-out fence (Q3 + 3 IQR) of the distances of the images
fold 0 held out, which it never saw: a new image farther than that is stranger than held-out
training images ever are. Written by the predict stage, read by ``predict --images``; shipped
with the models, so a machine without the training images still has it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.neighbors import NearestNeighbors

from foldstack.core.files import atomic_path

NAME = "reference.npz"
NEIGHBOURS = 5
MAX_BANK = 5000  # rows kept: the distance barely moves beyond a few thousand, the file stays small


@dataclass(frozen=True)
class Reference:
    """The training images as one model sees them.

    Attributes:
        bank: L2-normalised features of the training images fold 0 trained on ``(n, d)``.
        threshold: the distance beyond which an image is unlike the training images.
        key: what made it (the model's fold 0 recipe and weights); stale under another key.
    """

    bank: np.ndarray
    threshold: float
    key: str

    @classmethod
    def fit(cls, seen: np.ndarray, held_out: np.ndarray, key: str, seed: int = 0) -> Reference:
        """The reference of features ``seen`` (trained on) and ``held_out`` (never seen)."""
        seen = _normalise(seen)
        if len(seen) > MAX_BANK:
            seen = seen[np.random.default_rng(seed).choice(len(seen), MAX_BANK, replace=False)]
        reference = cls(seen, np.inf, key)
        q1, q3 = np.percentile(reference.distances(held_out), [25, 75])
        return cls(seen, float(q3 + 3 * (q3 - q1)), key)

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Each row's distance to its k-th nearest training image."""
        k = min(NEIGHBOURS, len(self.bank))
        found, _ = NearestNeighbors(n_neighbors=k).fit(self.bank).kneighbors(_normalise(features))
        return found[:, -1]


def _normalise(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def write(model_dir: Path, reference: Reference) -> None:
    with atomic_path(model_dir / NAME, suffix=".npz") as tmp:
        np.savez(tmp, bank=reference.bank.astype(np.float32), threshold=reference.threshold, key=reference.key)


def read(model_dir: Path, key: str | None = None) -> Reference | None:
    """The model's reference, or None without one (or, given ``key``, with another key)."""
    path = model_dir / NAME
    if not path.is_file():
        return None
    with np.load(path) as data:
        reference = Reference(data["bank"].astype(np.float64), float(data["threshold"]), str(data["key"]))
    return None if key is not None and reference.key != key else reference
