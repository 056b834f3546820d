"""The estimator contract shared by every level-2 candidate (blenders and stackers).

Input is the base models' probabilities stacked into ``X`` of shape ``(n_samples, n_models,
n_classes)``: keeping the model axis lets a blender weigh models and a stacker flatten them, and
the class count is known even when a training fold lacks a rare class. ``y`` holds class indices
``(n_samples,)``, or for multilabel a 0/1 matrix ``(n_samples, n_classes)``.

An ordinal task's ``X`` holds one score per model, ``(n_samples, n_models, 1)``, and ``y`` the
grade indices: a candidate that applies to it (``Candidate.outputs``) regresses the grade and
outputs a score ``(n_samples, 1)``. A regression's ``X`` holds one value per model, ``(n_samples,
n_models, 1)``, and ``y`` the float targets: such a candidate predicts the target ``(n_samples, 1)``.

A stacker built with ``features`` (``stack.features``) also takes the rows' table columns,
``table`` (a frame row for row with ``X``), in ``fit`` and ``predict_proba``; it encodes them
with :class:`foldstack.level2.columns.TableEncoder`, fitted in its own ``fit``.

The contract is scikit-learn's: ``__init__`` only stores parameters, ``fit`` returns ``self``,
learned attributes end in ``_``, predicting before ``fit`` raises ``NotFittedError`` and a shape
that does not fit raises ``ValueError`` -- so ``sklearn.base.clone`` works on every candidate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_array, check_is_fitted

from foldstack.core.config import StackFeatures
from foldstack.core.errors import FoldstackError
from foldstack.core.metrics import grades, hard_predictions, is_regression
from foldstack.level2.columns import TableEncoder


class StackError(FoldstackError):
    """The stacking settings cannot be honoured for this pipeline."""


class Level2Estimator(BaseEstimator):
    """Base class: input checks and the public methods; subclasses implement ``_fit`` and
    ``_predict_proba`` on checked arrays."""

    #: Whether a table's missing numbers are imputed for it (a linear model) or kept missing.
    imputes_missing = False

    def fit(self, X: np.ndarray, y: np.ndarray, table: pd.DataFrame | None = None) -> Level2Estimator:
        """Learn from base-model probabilities ``X`` and targets ``y`` (and, for a candidate
        given ``features``, the rows' table columns ``table``, row for row); returns ``self``."""
        X = _check_X(X)
        y = _check_y(y, X)
        self.n_models_, self.n_classes_ = X.shape[1:]
        self.multilabel_ = y.ndim == 2
        self.regression_ = _is_regression(X, y)
        self.ordinal_ = _is_ordinal(X, y) and not self.regression_
        self.n_grades_ = int(y.max()) + 1 if self.ordinal_ else None
        spec = self._spec(table)
        if spec is None:
            self._fit(X, y)
            return self
        # Fitted here, on this fit's rows alone: under CV, inside each fold.
        self.table_encoder_ = TableEncoder(spec, impute=self.imputes_missing, target=self._target(),
                                           seed=getattr(self, "seed", 0))
        self._fit(X, y, self.table_encoder_.fit_transform(X, table, y))
        return self

    def predict_proba(self, X: np.ndarray, table: pd.DataFrame | None = None) -> np.ndarray:
        """Class probabilities ``(n_samples, n_classes)`` (multilabel: one per class, independent)."""
        check_is_fitted(self)
        X = _check_X(X)
        if X.shape[1:] != (self.n_models_, self.n_classes_):
            raise ValueError(f"X has {X.shape[1]} models x {X.shape[2]} classes; fit saw "
                             f"{self.n_models_} models x {self.n_classes_} classes")
        if self._spec(table) is None:
            return self._predict_proba(X)
        return self._predict_proba(X, self.table_encoder_.transform(X, table))

    def predict(self, X: np.ndarray, table: pd.DataFrame | None = None) -> np.ndarray:
        """Class indices (ordinal: the score rounded to a grade seen in ``fit``), for multilabel
        a 0/1 matrix (probability >= 0.5), for a regression the predicted values ``(n,)``."""
        if self.regression_:
            return self.predict_proba(X, table)[:, 0]
        if self.ordinal_:
            return grades(self.predict_proba(X, table), self.n_grades_)
        return hard_predictions(self.predict_proba(X, table), self.multilabel_)

    @property
    def takes_table(self) -> bool:
        """Whether ``fit`` and ``predict_proba`` need the rows' table (``features`` is set)."""
        return getattr(self, "features", None) is not None

    def _spec(self, table: pd.DataFrame | None) -> StackFeatures | None:
        if self.takes_table != (table is not None):
            raise ValueError("a table is needed with features, and only then" if self.takes_table
                             else f"{type(self).__name__} takes no table (no features)")
        return getattr(self, "features", None)

    def _target(self) -> str:
        if self.multilabel_:
            return "multilabel"
        # A training fold may lack a class: the encoder counts the classes it is given.
        return "continuous" if self.ordinal_ or self.regression_ else "auto"

    def _fit(self, X: np.ndarray, y: np.ndarray, extra: np.ndarray | None = None) -> None:
        """Fit on checked arrays; ``extra``: the table's encoded columns ``(n, k)``, row for row."""
        raise NotImplementedError

    def _predict_proba(self, X: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
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
