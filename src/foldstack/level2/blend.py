"""Blenders: level-2 candidates that combine the base models' probabilities without a model of
their own -- the best single model, the mean, a weighted mean and a rank average."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.stats import rankdata

from foldstack.core import metrics
from foldstack.level2.base import Level2Estimator


class BestSingle(Level2Estimator):
    """The base model that scores best on the training rows.

    Args:
        metric: registry name of the metric that picks the model.
    """

    def __init__(self, metric: str = "log_loss") -> None:
        self.metric = metric

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        metric = metrics.get(self.metric)
        self.scores_ = np.array([metric(y, X[:, m]) for m in range(X.shape[1])])
        sign = 1.0 if metric.greater_is_better else -1.0
        self.best_ = int(np.argmax(sign * self.scores_))

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        return X[:, self.best_]


class MeanBlend(Level2Estimator):
    """The plain mean of the models' probabilities (nothing to learn but the shapes)."""

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        pass

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        return X.mean(axis=1)


class WeightedMeanBlend(Level2Estimator):
    """A mean with non-negative weights that sum to 1, optimised on the training rows.

    The weights minimise ``objective`` rather than the pipeline's metric because accuracy, F1 and
    kappa are step functions of the weights: a gradient-based optimiser (SLSQP) would not move.
    Log loss is smooth and proper, so it rewards the blend whose probabilities are most right.
    An ordinal task's scores are blended to minimise the squared error to the grade instead (its
    cut points are fitted afterwards, on the blend's OOF scores).

    Args:
        objective: registry name of a smooth metric to optimise (class probabilities).
    """

    def __init__(self, objective: str = "log_loss") -> None:
        self.objective = objective

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        if self.ordinal_:
            def loss(w: np.ndarray) -> float:
                return float(np.mean((_weighted(X, w)[:, 0] - y) ** 2))
        else:
            metric = metrics.get(self.objective)
            sign = -1.0 if metric.greater_is_better else 1.0

            def loss(w: np.ndarray) -> float:
                return sign * metric(y, _weighted(X, w))
        n_models = X.shape[1]
        result = minimize(
            loss,
            x0=np.full(n_models, 1.0 / n_models),
            method="SLSQP",
            bounds=[(0.0, 1.0)] * n_models,
            constraints=({"type": "eq", "fun": lambda w: w.sum() - 1.0},),
        )
        # SLSQP meets the constraints only to its tolerance; make them exact.
        weights = np.clip(result.x, 0.0, None)
        self.weights_ = weights / weights.sum()

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        return _weighted(X, self.weights_)


class RankAverage(Level2Estimator):
    """The mean over models of each class column's ranks, scaled to (0, 1].

    Only fair for metrics that depend on ranks alone (ROC AUC): it discards how confident each
    model is and keeps only its ordering, which makes differently calibrated models comparable.
    Ranks are taken within the rows passed to ``predict_proba`` (a validation fold, the test set),
    so the output orders rows but is not a calibrated probability.
    """

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        pass

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        return (rankdata(X, axis=0) / len(X)).mean(axis=1)


def _weighted(X: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.einsum("nmc,m->nc", X, weights)
