"""What one (model, fold) training is, as plain data: picklable, and free of Keras.

:class:`FoldSpec` holds what every view of a fold shares. The train stage sends a
:class:`FoldTask` (image caches as files) to the fold's own process, which opens them and builds
the :class:`foldstack.model.FoldJob` (arrays, the metric, callbacks) that the regimes train.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from foldstack.config import AugmentConfig, ModelConfig
from foldstack.metrics import metric_targets


@dataclass(kw_only=True)
class FoldSpec:
    """The model, the data split and where the fold's files go."""

    model: ModelConfig
    task: str
    size: int
    targets: np.ndarray
    train_index: np.ndarray
    valid_index: np.ndarray
    augment: AugmentConfig
    fold_dir: Path
    seed: int
    workers: int = 1
    class_weight: dict[int, float] | None = None

    @property
    def n_classes(self) -> int:
        return self.targets.shape[1]

    def y_true(self, index: np.ndarray) -> np.ndarray:
        return metric_targets(self.targets[index], self.task)

    def spec(self) -> dict[str, Any]:
        """The :class:`FoldSpec` fields, as keywords for another view of the same fold."""
        return {f.name: getattr(self, f.name) for f in fields(FoldSpec)}


@dataclass(kw_only=True)
class FoldTask(FoldSpec):
    """A fold as sent to its own process: the metric by name, the uint8 image cache of each split
    as a file, and for the ``features`` regime the feature cache's folder and key."""

    metric: str
    caches: dict[str, Path]
    features: Path | None = None
    features_key: str = ""
