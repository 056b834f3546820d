"""Regimes: seconds per fold of ``features`` against ``finetune`` on the same backbone
(EfficientNet-Lite0 with its ImageNet weights) and data (digits at ``size`` px), fold 0.

``features`` pays for the pooled features once per model (all images, every TTA view), so its
per-fold cost is a fifth of that (5 folds) plus its head's training.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import keras

from benchmarks import Row, digits_job, timed


def features_fold(folder: Path, size: int, epochs: int) -> tuple[float, float]:
    """``(seconds to compute the feature cache, seconds to train fold 0's head)``."""
    from foldstack.model import FeatureCache, fit_fold

    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        job = digits_job(folder, "lite0", Path(tmp) / "fold", image_size=size, epochs=epochs)
        build_s, job.features = timed(FeatureCache.build, job.model, size, job.images, job.augment,
                                      Path(tmp) / "features", "key", job.workers)
        keras.utils.set_random_seed(job.seed)
        fit_s, _ = timed(fit_fold, job)
        keras.backend.clear_session()
    return build_s, fit_s


def finetune_fold(folder: Path, size: int, epochs: int) -> float:
    """Seconds to train fold 0 with ``finetune``: one head epoch, then the rest unfrozen."""
    from foldstack.model import fit_fold

    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        job = digits_job(folder, "lite0", Path(tmp) / "fold", image_size=size, epochs=epochs,
                         regime="finetune", head_epochs=1, patience=epochs + 1)
        keras.utils.set_random_seed(job.seed)
        seconds, _ = timed(fit_fold, job)
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


