"""Grad-CAM looks where the answer is: a class defined by a bright square in one corner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import make_config
from foldstack.core import metrics
from foldstack.core.errors import DataError
from foldstack.training.fold_task import FoldTask
from foldstack.training.gradcam import explain
from foldstack.training.regimes import fit

SIZE, SQUARE = 32, 8


def _corner_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dim noise; class 0 has a bright square in the top-left corner, class 1 in the bottom-right."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(n, SIZE, SIZE, 3), dtype=np.uint8)
    y = np.arange(n) % 2
    for image, label in zip(images, y):
        corner = slice(0, SQUARE) if label == 0 else slice(SIZE - SQUARE, SIZE)
        image[corner, corner] = 255
    return images, y


def _task(tmp_path: Path, y: np.ndarray, regime: str = "scratch") -> FoldTask:
    cfg = make_config(models=[{"name": "cnn", "backbone": "small_cnn", "weights": "none", "image_size": SIZE,
                               "regime": regime, "epochs": 4, "batch_size": 16, "lr": 0.003}])
    return FoldTask(model=cfg.models[0], task="multiclass", metric="accuracy", y=y, n_classes=2,
                    train_index=np.arange(0, len(y) - 32), valid_index=np.arange(len(y) - 32, len(y)),
                    augment=cfg.augment, caches={}, fold_dir=tmp_path, seed=0)


def test_heatmap_peaks_in_the_corner_that_defines_the_class(tmp_path: Path) -> None:
    images, y = _corner_images(160, seed=0)
    task = _task(tmp_path, y)
    fit(task, {"train": images}, metrics.get("accuracy"))
    fresh, fresh_y = _corner_images(20, seed=1)
    result = explain(task, fresh)
    assert result.heatmaps.shape == (20, SIZE, SIZE) and result.heatmaps.max() == pytest.approx(1.0)
    assert (result.classes == fresh_y).all(), "the network has not learnt the corners"
    peaks = np.array([np.unravel_index(h.argmax(), h.shape) for h in result.heatmaps])
    in_top_left = (peaks < SIZE // 2).all(axis=1)
    in_bottom_right = (peaks >= SIZE // 2).all(axis=1)
    assert in_top_left[fresh_y == 0].all() and in_bottom_right[fresh_y == 1].all(), peaks
    # A class asked for is the class explained, whatever the prediction.
    other = explain(task, fresh, class_index=1 - fresh_y)
    assert (other.classes == 1 - fresh_y).all()


def test_a_fold_without_weights_is_one_line(tmp_path: Path) -> None:
    images, y = _corner_images(4, seed=0)
    with pytest.raises(DataError, match=r"best.weights.h5: not found; train this fold first"):
        explain(_task(tmp_path, y), images)
