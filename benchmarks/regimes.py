"""Regimes: seconds per fold of ``features`` against ``finetune`` on the same backbone
(EfficientNet-Lite0 with its ImageNet weights) and data (digits at ``size`` px), fold 0.

``features`` pays for the pooled features once per model (all images, every TTA view), so its
per-fold cost is a fifth of that (5 folds) plus its head's training.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import keras

from benchmarks import Row, digits_task, timed


def features_fold(folder: Path, size: int, epochs: int) -> tuple[float, float]:
    """``(seconds to compute the feature cache, seconds to train fold 0's head)``."""
    from foldstack.core import metrics
    from foldstack.training.features import FeatureCache
    from foldstack.training.regimes import fit

    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        task, images = digits_task(folder, "lite0", Path(tmp) / "fold", image_size=size, epochs=epochs)
        task = dataclasses.replace(task, features=Path(tmp) / "features")
        build_s, _ = timed(FeatureCache.build, task.model, images, task.augment, task.features,
                             {split: "key" for split in images}, task.workers)
        keras.utils.set_random_seed(task.seed)
        fit_s, _ = timed(fit, task, images, metrics.get(task.metric))
        keras.backend.clear_session()
    return build_s, fit_s


def finetune_fold(folder: Path, size: int, epochs: int) -> float:
    """Seconds to train fold 0 with ``finetune``: one head epoch, then the rest unfrozen."""
    from foldstack.core import metrics
    from foldstack.training.regimes import fit

    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        task, images = digits_task(folder, "lite0", Path(tmp) / "fold", image_size=size, epochs=epochs,
                                   regime="finetune", head_epochs=1, patience=epochs + 1)
        keras.utils.set_random_seed(task.seed)
        seconds, _ = timed(fit, task, images, metrics.get(task.metric))
        keras.backend.clear_session()
    return seconds


def run(folder: Path, size: int = 32, finetune_epochs: int = 2, head_epochs: int = 40, k: int = 5) -> list[Row]:
    build_s, head_s = features_fold(folder, size, head_epochs)
    tune_s = finetune_fold(folder, size, finetune_epochs)
    per_fold = build_s / k + head_s
    return [
        Row("regimes", f"efficientnet_lite0 {size}px digits: finetune ({finetune_epochs} ep) / features "
                       f"({head_epochs} ep)",
            f"{tune_s:.1f} s vs {per_fold:.1f} s per fold (features: cache {build_s:.1f} s / {k} + head "
            f"{head_s:.1f} s)", tune_s / per_fold),
    ]


