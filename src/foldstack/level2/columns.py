"""Table columns beside the base models' scores (``stack.features``): what a stacker that takes
features adds to its input, fitted with it.

:class:`TableEncoder` is a scikit-learn transformer fitted inside the stacker's own ``fit``, so
under the nested CV (:mod:`foldstack.level2.selection`) it only ever learns from the training
folds: categorical columns are target-encoded (scikit-learn's ``TargetEncoder``, itself
cross-fitted on the training rows; one-hot for multilabel targets) by a ``ColumnTransformer``
fitted per fold, and a category the fold has not seen is encoded as unknown (the prior), never
an error. Numbers stay missing where they are (LightGBM splits on missing) or, for a linear
stacker, are imputed by the median with a missing indicator and scaled.

Group features are computed per group over the rows they are given, from each model's scores
and the numeric columns: no label enters them, and the test rows' come from the test rows of
the same group, as the issue's winners built their "ugly duckling" features.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler, TargetEncoder
from sklearn.utils.validation import check_is_fitted

from foldstack.core.config import StackFeatures


def _rank(values: pd.core.groupby.SeriesGroupBy) -> pd.Series:
    return values.rank(pct=True)


def _zscore(values: pd.core.groupby.SeriesGroupBy) -> pd.Series:
    spread = values.transform("std").fillna(0.0).replace(0.0, 1.0)
    return (values.obj - values.transform("mean")) / spread


#: Each group feature of a column: its value's rank in its group (0..1], its z-score in its
#: group (0 where the group does not vary), and the group's mean. ``count`` is the group's size,
#: once per row, not per column.
PER_COLUMN: dict[str, Callable[[pd.core.groupby.SeriesGroupBy], pd.Series]] = {
    "rank": _rank,
    "zscore": _zscore,
    "mean": lambda values: values.transform("mean"),
}


def score_columns(X: np.ndarray) -> pd.DataFrame:
    """Each model's scores as columns: every class, but a two-class task's positive class only
    (its other column is one minus it)."""
    classes = range(1, 2) if X.shape[2] == 2 else range(X.shape[2])
    return pd.DataFrame({f"model{m}_class{c}": X[:, m, c] for m in range(X.shape[1]) for c in classes})


def group_features(spec: StackFeatures, X: np.ndarray, table: pd.DataFrame) -> pd.DataFrame:
    """``spec.group_features`` of these rows, per group of ``spec.group``: of every model's
    scores (:func:`score_columns`) and every numeric column; an empty frame where none is asked."""
    if not spec.group_features:
        return pd.DataFrame(index=range(len(X)))
    values = pd.concat([score_columns(X), table[spec.numeric].reset_index(drop=True)], axis=1)
    groups = table[spec.group].fillna("").to_numpy()
    out = {}
    for name in spec.group_features:
        if name == "count":
            out["group_count"] = pd.Series(groups).map(pd.Series(groups).value_counts()).to_numpy(np.float64)
            continue
        for column in values.columns:
            out[f"group_{name}_{column}"] = PER_COLUMN[name](values[column].groupby(groups)).to_numpy(np.float64)
    return pd.DataFrame(out)


class TableEncoder(TransformerMixin, BaseEstimator):
    """The table columns and group features of ``spec`` as a float matrix, learned from the rows
    it is fitted on (see the module's docstring).

    Args:
        spec: ``stack.features``.
        impute: impute missing numbers (median, with an indicator) and scale, for a linear
            model; else keep them missing.
        target: ``auto`` (class indices: binary or multiclass, as the rows have them),
            ``continuous`` (an ordinal grade) or ``multilabel`` (categories one-hot encoded: a
            target encoder takes one target).
        seed: seeds the target encoder's cross-fitting.
    """

    def __init__(self, spec: StackFeatures, impute: bool = False, target: str = "auto", seed: int = 0) -> None:
        self.spec = spec
        self.impute = impute
        self.target = target
        self.seed = seed

    def fit(self, X: np.ndarray, table: pd.DataFrame, y: np.ndarray) -> TableEncoder:
        self.fit_transform(X, table, y)
        return self

    def fit_transform(self, X: np.ndarray, table: pd.DataFrame, y: np.ndarray) -> np.ndarray:
        """The training rows' matrix; categories target-encoded out of fold within these rows."""
        frame = self._frame(X, table)
        self.transformer_ = self._transformer(frame)
        return self.transformer_.fit_transform(frame, y).astype(np.float64)

    def transform(self, X: np.ndarray, table: pd.DataFrame) -> np.ndarray:
        check_is_fitted(self)
        return self.transformer_.transform(self._frame(X, table)).astype(np.float64)

    def _frame(self, X: np.ndarray, table: pd.DataFrame) -> pd.DataFrame:
        if len(table) != len(X):
            raise ValueError(f"the table has {len(table)} rows but X has {len(X)}")
        missing = [column for column in {*self.spec.used, *filter(None, [self.spec.group])} if column not in table]
        if missing:
            raise ValueError(f"the table lacks column {missing[0]!r}")
        numbers = table[self.spec.numeric].astype(np.float64).reset_index(drop=True)
        categories = table[self.spec.categorical].astype(object).reset_index(drop=True)
        categories = categories.where(categories.notna(), "")  # a missing category is a category
        return pd.concat([numbers, group_features(self.spec, X, table), categories], axis=1)

    def _transformer(self, frame: pd.DataFrame) -> ColumnTransformer:
        numeric = [column for column in frame.columns if column not in self.spec.categorical]
        numbers = (make_pipeline(SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                                 StandardScaler()) if self.impute else "passthrough")
        if self.target == "multilabel":
            categories = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
        else:  # an unseen category is encoded as the target's mean over the training rows
            # Plain K-fold: a stratified split fails on a class with fewer rows than folds.
            split = KFold(min(5, len(frame)), shuffle=True, random_state=self.seed)
            categories = TargetEncoder(target_type=self.target, cv=split)
        if self.impute:
            categories = make_pipeline(categories, StandardScaler())
        return ColumnTransformer([("numbers", numbers, numeric), ("categories", categories, self.spec.categorical)],
                                 sparse_threshold=0.0)
