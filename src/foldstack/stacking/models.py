"""Stackers: level-2 candidates that learn a model on the base models' OOF probabilities --
logistic regression and LightGBM (optionally with per-model summary features)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.multiclass import OneVsRestClassifier

from foldstack.metrics import EPS, hard_predictions
from foldstack.stacking.base import Level2Estimator

#: LightGBM defaults for level two: few rows and strongly correlated features, so small trees,
#: leaves that may hold few rows, L2 regularisation and a slow learning rate with early stopping.
#: One thread: the level-2 table is small, and a fixed thread count keeps runs bit-identical.
LIGHTGBM_DEFAULTS: dict[str, Any] = {
    "learning_rate": 0.05,
    "num_leaves": 7,
    "max_depth": 4,
    "min_data_in_leaf": 5,
    "min_sum_hessian_in_leaf": 1e-3,
    "lambda_l2": 1.0,
    "feature_fraction": 0.8,
    "num_iterations": 1000,
    "early_stopping_round": 50,
    "num_threads": 1,
    "deterministic": True,
    "force_row_wise": True,
    "verbose": -1,
}


class LogisticStacker(Level2Estimator):
    """Logistic regression on the log-probabilities of every model and class.

    Log-probabilities make the linear model a weighted geometric mean of the base models, the
    natural way to combine probabilities. Multilabel fits one binary model per class.

    Args:
        C: inverse L2 regularisation strength.
        max_iter: iterations for the lbfgs solver.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 1000) -> None:
        self.C = C
        self.max_iter = max_iter

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        model = LogisticRegression(C=self.C, max_iter=self.max_iter)
        self.model_ = OneVsRestClassifier(model) if self.multilabel_ else model
        self.model_.fit(_log_features(X), y)

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        proba = self.model_.predict_proba(_log_features(X))
        if self.multilabel_:
            return proba
        # A training fold may lack a rare class; give it probability 0 in its own column.
        full = np.zeros((len(X), self.n_classes_))
        full[:, self.model_.classes_] = proba
        return full


class LightGBMStacker(Level2Estimator):
    """LightGBM on the OOF probabilities, early-stopped on an inner split of the training rows.

    The number of rounds is chosen on a held-out ``valid_fraction`` of the training rows, then
    the model is refitted on all of them with that many rounds, so no row is wasted (level-2
    tables are small). Binary fits one binary model; multiclass one softmax model; multilabel
    one binary model per class.

    Args:
        params: LightGBM parameters over :data:`LIGHTGBM_DEFAULTS` (``num_iterations`` is the most
            rounds, ``early_stopping_round`` the patience; 0 turns early stopping off).
        summary_features: add per-model entropy and top probability and the models' agreement.
        valid_fraction: share of the training rows held out for early stopping.
        seed: seeds LightGBM and the inner split.
    """

    def __init__(self, params: dict[str, Any] | None = None, summary_features: bool = False,
                 valid_fraction: float = 0.2, seed: int = 0) -> None:
        self.params = params
        self.summary_features = summary_features
        self.valid_fraction = valid_fraction
        self.seed = seed

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        features = self._features(X)
        if self.multilabel_:
            targets = [y[:, c] for c in range(self.n_classes_)]
        else:
            targets = [y]
        objective = _objective(self.n_classes_, self.multilabel_)
        self.boosters_ = [self._train(features, target, objective) for target in targets]

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        features = self._features(X)
        outputs = [np.full(len(X), b) if isinstance(b, float) else b.predict(features)
                   for b in self.boosters_]
        if self.multilabel_:
            return np.column_stack(outputs)
        if self.n_classes_ == 2:
            return np.column_stack([1.0 - outputs[0], outputs[0]])
        return outputs[0]

    def _features(self, X: np.ndarray) -> np.ndarray:
        flat = X.reshape(len(X), -1)
        if not self.summary_features:
            return flat
        return np.hstack([flat, summary_features(X, self.multilabel_)])

    def _train(self, features: np.ndarray, target: np.ndarray, objective: dict[str, Any]):
        """A booster for one target, or the target's mean when it is constant (a multilabel
        class absent from the training folds), which LightGBM cannot fit."""
        import lightgbm

        if np.unique(target).size < 2 and objective["objective"] == "binary":
            return float(target.mean())
        params = {**LIGHTGBM_DEFAULTS, "seed": self.seed, **(self.params or {}), **objective}
        patience = params.pop("early_stopping_round")
        if patience:
            inner, held = _inner_split(target, self.valid_fraction, self.seed)
            train = lightgbm.Dataset(features[inner], target[inner])
            valid = lightgbm.Dataset(features[held], target[held], reference=train)
            probe = lightgbm.train(params, train, valid_sets=[valid],
                                   callbacks=[lightgbm.early_stopping(patience, verbose=False)])
            params["num_iterations"] = max(probe.best_iteration, 1)
        return lightgbm.train(params, lightgbm.Dataset(features, target))


def summary_features(X: np.ndarray, multilabel: bool) -> np.ndarray:
    """Per model its entropy and top probability, plus the share of models that agree with the
    mean's prediction: ``(n_samples, 2 * n_models + 1)``.

    Multilabel entropy is the mean binary entropy over classes, and agreement is averaged over
    classes.
    """
    p = np.clip(X, EPS, 1 - EPS)
    if multilabel:
        entropy = -(p * np.log(p) + (1 - p) * np.log(1 - p)).mean(axis=2)
    else:
        entropy = -(p * np.log(p)).sum(axis=2)
    top = X.max(axis=2)
    consensus = hard_predictions(X.mean(axis=1), multilabel)
    votes = np.stack([hard_predictions(X[:, m], multilabel) for m in range(X.shape[1])], axis=1)
    agree = votes == consensus[:, None]
    agreement = agree.mean(axis=(1, 2)) if multilabel else agree.mean(axis=1)
    return np.hstack([entropy, top, agreement[:, None]])


def _log_features(X: np.ndarray) -> np.ndarray:
    return np.log(np.clip(X, EPS, 1.0)).reshape(len(X), -1)


def _objective(n_classes: int, multilabel: bool) -> dict[str, Any]:
    if multilabel or n_classes == 2:
        return {"objective": "binary"}
    return {"objective": "multiclass", "num_class": n_classes}


def _inner_split(target: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices to train on and to early-stop on, stratified where every class allows it."""
    rows = np.arange(len(target))
    try:
        return tuple(train_test_split(rows, test_size=fraction, random_state=seed, stratify=target))
    except ValueError:  # a class with a single row cannot be split in two
        return tuple(train_test_split(rows, test_size=fraction, random_state=seed))
