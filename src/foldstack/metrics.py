"""Metrics registry: a pipeline names its metric; each metric knows its direction.

A metric scores class probabilities: ``metric(y_true, proba)`` where ``y_true`` holds class
indices (shape ``(n,)``; for multilabel a 0/1 matrix ``(n, C)``) and ``proba`` is ``(n, C)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Metric:
    name: str
    score: Callable[[np.ndarray, np.ndarray], float]
    greater_is_better: bool

    def __call__(self, y_true: np.ndarray, proba: np.ndarray) -> float:
        return float(self.score(np.asarray(y_true), np.asarray(proba, dtype=np.float64)))

    def better(self, a: float, b: float) -> bool:
        """Whether score ``a`` beats score ``b``."""
        return a > b if self.greater_is_better else a < b


_REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    _REGISTRY[metric.name] = metric
    return metric


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> Metric:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(names())}") from None


def _accuracy(y_true: np.ndarray, proba: np.ndarray) -> float:
    return float(np.mean(proba.argmax(axis=1) == y_true))


def _log_loss(y_true: np.ndarray, proba: np.ndarray) -> float:
    from sklearn.metrics import log_loss

    proba = np.clip(proba, 1e-15, 1 - 1e-15)
    proba = proba / proba.sum(axis=1, keepdims=True)
    return log_loss(y_true, proba, labels=np.arange(proba.shape[1]))


register(Metric("accuracy", _accuracy, greater_is_better=True))
register(Metric("log_loss", _log_loss, greater_is_better=False))
