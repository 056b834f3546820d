"""The estimator contract shared by every level-2 candidate (blenders and stackers).

Input is the base models' probabilities stacked into ``X`` of shape ``(n_samples, n_models,
n_classes)``: keeping the model axis lets a blender weigh models and a stacker flatten them, and
the class count is known even when a training fold lacks a rare class. ``y`` holds class indices
``(n_samples,)``, or for multilabel a 0/1 matrix ``(n_samples, n_classes)``.

An ordinal task's ``X`` holds one score per model, ``(n_samples, n_models, 1)``, and ``y`` the
grade indices: a candidate that applies to it (``Candidate.outputs``) regresses the grade and
outputs a score ``(n_samples, 1)``. A regression's ``X`` holds one value per model, ``(n_samples,
n_models, 1)``, and ``y`` the float targets: such a candidate predicts the target ``(n_samples, 1)``.

The contract is scikit-learn's: ``__init__`` only stores parameters, ``fit`` returns ``self``,
learned attributes end in ``_``, predicting before ``fit`` raises ``NotFittedError`` and a shape
that does not fit raises ``ValueError`` -- so ``sklearn.base.clone`` works on every candidate.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_array, check_is_fitted

from foldstack.core.errors import FoldstackError
from foldstack.core.metrics import grades, hard_predictions, is_regression


class StackError(FoldstackError):
    """The stacking settings cannot be honoured for this pipeline."""


class Level2Estimator(BaseEstimator):
    """Base class: input checks and the public methods; subclasses implement ``_fit`` and
    ``_predict_proba`` on checked arrays."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> Level2Estimator:
        """Learn from base-model probabilities ``X`` and targets ``y``; returns ``self``."""
        X = _check_X(X)
        y = _check_y(y, X)
        self.n_models_, self.n_classes_ = X.shape[1:]
        self.multilabel_ = y.ndim == 2
        self.regression_ = _is_regression(X, y)
        self.ordinal_ = _is_ordinal(X, y) and not self.regression_
        self.n_grades_ = int(y.max()) + 1 if self.ordinal_ else None
        self._fit(X, y)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities ``(n_samples, n_classes)`` (multilabel: one per class, independent)."""
        check_is_fitted(self)
        X = _check_X(X)
        if X.shape[1:] != (self.n_models_, self.n_classes_):
            raise ValueError(f"X has {X.shape[1]} models x {X.shape[2]} classes; fit saw "
                             f"{self.n_models_} models x {self.n_classes_} classes")
        return self._predict_proba(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class indices (ordinal: the score rounded to a grade seen in ``fit``), for multilabel
        a 0/1 matrix (probability >= 0.5), for a regression the predicted values ``(n,)``."""
        if self.regression_:
            return self.predict_proba(X)[:, 0]
        if self.ordinal_:
            return grades(self.predict_proba(X), self.n_grades_)
        return hard_predictions(self.predict_proba(X), self.multilabel_)

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _check_X(X: np.ndarray) -> np.ndarray:
    X = check_array(X, allow_nd=True, dtype=np.float64, ensure_2d=False)
    if X.ndim != 3:
        raise ValueError(f"X must be 3-D (n_samples, n_models, n_classes); got shape {X.shape}")
    return X


def _is_ordinal(X: np.ndarray, y: np.ndarray) -> bool:
    """One score per model for single-label targets (a binary task has two probabilities)."""
    return X.shape[2] == 1 and np.ndim(y) == 1


def _is_regression(X: np.ndarray, y: np.ndarray) -> bool:
    """One value per model for float targets (a regression's; grades are integers)."""
    return X.shape[2] == 1 and is_regression(y)


def _check_y(y: np.ndarray, X: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    n_samples, _, n_classes = X.shape
    if len(y) != n_samples:
        raise ValueError(f"y has {len(y)} rows but X has {n_samples}")
    if _is_regression(X, y):
        if not np.isfinite(y).all():
            raise ValueError("a regression's y must hold finite numbers")
        return y
    if _is_ordinal(X, y):
        if not (np.isin(y, np.arange(y.max() + 1)).all() if len(y) else True):
            raise ValueError("an ordinal y must hold grade indices 0, 1, 2, ...")
        return y.astype(int)
    if y.ndim == 2:
        if y.shape[1] != n_classes or not np.isin(y, (0, 1)).all():
            raise ValueError(f"multilabel y must be a 0/1 matrix with {n_classes} columns; got shape {y.shape}")
        return y.astype(int)
    if y.ndim != 1 or not np.isin(y, np.arange(n_classes)).all():
        raise ValueError(f"y must hold class indices 0..{n_classes - 1} (or be a 0/1 matrix for multilabel)")
    return y.astype(int)
