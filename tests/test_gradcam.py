"""Grad-CAM looks where the answer is: a class defined by the colour of a bright square that
lies in a random corner, so the square is the only place that tells the class (a class defined
by *which* corner holds a square could be told by looking at one corner alone, and its heatmap
would then point there for both classes)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import make_config
from foldstack.core import metrics
from foldstack.core.errors import DataError
from foldstack.training.fold_task import FoldTask
from foldstack.training.gradcam import explain
from foldstack.training.regimes import fit

SIZE, SQUARE = 32, 8
#: Each class's square: red (class 0) or blue (class 1), on dim grey noise.
CHANNEL = {0: 0, 1: 2}


def _corner_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dim noise with one bright square in a random corner (0 top-left, 1 top-right, 2 bottom-left,
    3 bottom-right); the square is red for class 0, blue for class 1. Images, classes, corners."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(n, SIZE, SIZE, 3), dtype=np.uint8)
    y = np.arange(n) % 2
    corners = rng.integers(0, 4, size=n)
    for image, label, corner in zip(images, y, corners):
        rows, cols = _quadrant(corner, SQUARE)
        image[rows, cols, CHANNEL[label]] = 255
    return images, y, corners


def _quadrant(corner: int, side: int) -> tuple[slice, slice]:
    """The ``side`` x ``side`` block in ``corner`` of the image."""
    top, left = divmod(int(corner), 2)
    rows = slice(0, side) if top == 0 else slice(SIZE - side, SIZE)
    cols = slice(0, side) if left == 0 else slice(SIZE - side, SIZE)
    return rows, cols


def _in_corner(peak: np.ndarray, corner: int) -> bool:
    """Whether a heatmap's peak ``(row, col)`` lies in ``corner``'s quarter of the image."""
    rows, cols = _quadrant(corner, SIZE // 2)
    return rows.start <= peak[0] < rows.stop and cols.start <= peak[1] < cols.stop


def _task(tmp_path: Path, y: np.ndarray, regime: str = "scratch") -> FoldTask:
    cfg = make_config(models=[{"name": "cnn", "backbone": "small_cnn", "weights": "none", "image_size": SIZE,
                               "regime": regime, "epochs": 4, "batch_size": 16, "lr": 0.003}])
    return FoldTask(model=cfg.models[0], task="multiclass", metric="accuracy", y=y, n_classes=2,
                    train_index=np.arange(0, len(y) - 32), valid_index=np.arange(len(y) - 32, len(y)),
                    augment=cfg.augment, caches={}, fold_dir=tmp_path, seed=0)


def fit_as_a_fold(task: FoldTask, images: np.ndarray):
    """The fold trained in this process, seeded as a fold's own process seeds it (training/worker.py):
    what a test sees does not depend on the tests run before it. Returns ``fit``'s predictor."""
    keras.utils.set_random_seed(task.seed)
    return fit(task, {"train": images}, metrics.get("accuracy"))


def test_heatmap_peaks_where_the_square_that_defines_the_class_is(tmp_path: Path) -> None:
    images, y, _ = _corner_images(160, seed=0)
    task = _task(tmp_path, y)
    fit_as_a_fold(task, images)
    fresh, fresh_y, corners = _corner_images(20, seed=1)
    result = explain(task, fresh)
    assert result.heatmaps.shape == (20, SIZE, SIZE) and result.heatmaps.max() == pytest.approx(1.0)
    assert (result.classes == fresh_y).all(), "the network has not learnt the colours"
    peaks = [np.unravel_index(h.argmax(), h.shape) for h in result.heatmaps]
    misplaced = [(i, peak, corner) for i, (peak, corner) in enumerate(zip(peaks, corners)) if not _in_corner(peak, corner)]
    assert not misplaced, f"(image, peak, corner of its square): {misplaced}"
    # A class asked for is the class explained, whatever the prediction.
    other = explain(task, fresh, class_index=1 - fresh_y)
    assert (other.classes == 1 - fresh_y).all()


def test_a_fold_without_weights_is_one_line(tmp_path: Path) -> None:
    images, y, _ = _corner_images(4, seed=0)
    with pytest.raises(DataError, match=r"best.weights.h5: not found; train this fold first"):
        explain(_task(tmp_path, y), images)
