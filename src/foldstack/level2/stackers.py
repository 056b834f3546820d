"""Stackers: level-2 candidates that learn a model on the base models' OOF probabilities --
logistic regression and LightGBM (optionally with per-model summary features) -- and ridge
regression on one number per model (an ordinal score, a regression's value)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.multiclass import OneVsRestClassifier

from foldstack.core.config import StackFeatures
from foldstack.core.metrics import EPS, hard_predictions, normalise_rows, one_hot
from foldstack.level2.base import Level2Estimator

#: LightGBM defaults for level two: few rows and strongly correlated features, so small trees,
#: leaves that may hold few rows, L2 regularisation and a slow learning rate with early stopping.
#: One thread: a fixed thread count keeps runs bit-identical, and OpenMP threads spin at each
#: barrier while a training run holds the other core (benchmarks/RESULTS.md, "Stacking at full
#: size"); set ``num_threads`` in ``stack.lightgbm`` on a machine of your own.
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


#: Above this many classes the stackers switch to the shared layout (see :class:`LogisticStacker`).
WIDE_MAX_CLASSES = 10


class LogisticStacker(Level2Estimator):
    """Logistic regression on the log-probabilities of the base models.

    Log-probabilities make the linear model a weighted geometric mean of the base models, the
    natural way to combine probabilities. Two layouts:

    * wide (up to ``wide_max_classes`` classes): one row per sample, every model's every class
      as a feature, so the model can learn which classes the base models confuse. Multiclass is
      one multinomial model, multilabel one binary model per class.
    * shared (more classes): one row per (sample, class) with the models' probabilities for that
      class, one binary model for all classes, rows renormalised for single-label tasks. With 120
      classes a wide model has 120 x (models x 120) weights and a few rows per class: it cannot
      be fitted well, or quickly.

    Args:
        C: inverse L2 regularisation strength.
        max_iter: iterations for the lbfgs solver.
        wide_max_classes: the most classes for the wide layout.
        features: ``stack.features``: the rows' table columns join the log-probabilities (missing
            numbers imputed, with an indicator; see :mod:`foldstack.level2.columns`).
    """

    imputes_missing = True

    def __init__(self, C: float = 1.0, max_iter: int = 1000, wide_max_classes: int = WIDE_MAX_CLASSES,
                 features: StackFeatures | None = None) -> None:
        self.C = C
        self.max_iter = max_iter
        self.wide_max_classes = wide_max_classes
        self.features = features

    def _fit(self, X: np.ndarray, y: np.ndarray, extra: np.ndarray | None = None) -> None:
        self.shared_ = self.n_classes_ > self.wide_max_classes
        model = LogisticRegression(C=self.C, max_iter=self.max_iter)
        if self.shared_:
            self.model_ = model.fit(_log_features(X, True, extra), one_hot(y, self.n_classes_).ravel())
        else:
            self.model_ = OneVsRestClassifier(model) if self.multilabel_ else model
            self.model_.fit(_log_features(X, False, extra), y)

    def _predict_proba(self, X: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
        proba = self.model_.predict_proba(_log_features(X, self.shared_, extra))
        if self.shared_:
            return _unshare(proba[:, 1], len(X), self.multilabel_)
        if self.multilabel_:
            return proba
        # A training fold may lack a rare class; give it probability 0 in its own column.
        full = np.zeros((len(X), self.n_classes_))
        full[:, self.model_.classes_] = proba
        return full


class RidgeStacker(Level2Estimator):
    """Ridge regression of the target on the models' one number each (a regression's values,
    an ordinal task's scores), with an intercept: a weighted mean that may also shift and
    rescale.

    Args:
        alpha: L2 regularisation strength (scikit-learn's ``Ridge``).
    """

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        if self.n_classes_ != 1:
            raise ValueError(f"ridge combines one number per model; X has {self.n_classes_} per model")
        self.model_ = Ridge(alpha=self.alpha).fit(X[:, :, 0], y.astype(np.float64))

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.model_.predict(X[:, :, 0])[:, None]


class LightGBMStacker(Level2Estimator):
    """LightGBM on the OOF probabilities, early-stopped on an inner split of the training rows.

    The number of rounds is chosen on a held-out ``valid_fraction`` of the training rows, then
    the model is refitted on all of them with that many rounds, so no row is wasted (level-2
    tables are small). Layouts as in :class:`LogisticStacker`: wide fits one binary model
    (binary), one softmax model (multiclass), one binary model per class (multilabel) or one
    regression of the grade on the models' scores (ordinal); shared fits one binary model on
    (sample, class) rows, which keeps 120 classes tractable.

    The shared layout is nearly all negatives (119 of every 120 rows with 120 classes), and its
    rows grow as samples x classes. Beyond ``max_negatives`` negative rows, the booster trains on
    every positive row and a uniform sample of ``max_negatives`` negative ones, and its
    probabilities are mapped back to the full data's odds (negative down-sampling with
    re-calibration, He et al. 2014), so they stay calibrated for log loss. At or below it the
    fit is exactly the unsampled one.

    Args:
        params: LightGBM parameters over :data:`LIGHTGBM_DEFAULTS` (``num_iterations`` is the most
            rounds, ``early_stopping_round`` the patience; 0 turns early stopping off).
        summary_features: add per-model entropy and top probability and the models' agreement.
        valid_fraction: share of the training rows held out for early stopping.
        seed: seeds LightGBM, the inner split and the negative sample.
        wide_max_classes: the most classes for the wide layout.
        max_negatives: the most negative rows of the shared layout to train on; None keeps all.
        features: ``stack.features``: the rows' table columns join the probabilities (missing
            numbers kept missing; see :mod:`foldstack.level2.columns`).
    """

    def __init__(self, params: dict[str, Any] | None = None, summary_features: bool = False,
                 valid_fraction: float = 0.2, seed: int = 0, wide_max_classes: int = WIDE_MAX_CLASSES,
                 max_negatives: int | None = None, features: StackFeatures | None = None) -> None:
        self.features = features
        self.params = params
        self.summary_features = summary_features
        self.valid_fraction = valid_fraction
        self.seed = seed
        self.wide_max_classes = wide_max_classes
        self.max_negatives = max_negatives

    def _fit(self, X: np.ndarray, y: np.ndarray, extra: np.ndarray | None = None) -> None:
        self.shared_ = self.n_classes_ > self.wide_max_classes
        rows, self.negative_rate_ = None, 1.0
        if self.shared_:
            target = one_hot(y, self.n_classes_).ravel()
            rows, self.negative_rate_ = _sample_negatives(target, self.max_negatives, self.seed)
            targets, objective = [target[rows]], {"objective": "binary"}
        elif self.ordinal_ or self.regression_:
            targets, objective = [y.astype(np.float64)], {"objective": "regression"}
        elif self.multilabel_:
            targets, objective = [y[:, c] for c in range(self.n_classes_)], {"objective": "binary"}
        elif self.n_classes_ == 2:
            targets, objective = [y], {"objective": "binary"}
        else:
            targets, objective = [y], {"objective": "multiclass", "num_class": self.n_classes_}
        features = self._features(X, extra, rows)
        self.boosters_ = [self._train(features, target, objective) for target in targets]

    def _predict_proba(self, X: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
        features = self._features(X, extra)
        outputs = [np.full(len(features), b) if isinstance(b, float) else b.predict(features)
                   for b in self.boosters_]
        if self.shared_:
            return _unshare(_undo_negative_sampling(outputs[0], self.negative_rate_), len(X), self.multilabel_)
        if self.multilabel_ or self.ordinal_ or self.regression_:
            return np.column_stack(outputs)
        if self.n_classes_ == 2:
            return np.column_stack([1.0 - outputs[0], outputs[0]])
        return outputs[0]

    def _features(self, X: np.ndarray, extra: np.ndarray | None, rows: np.ndarray | None = None) -> np.ndarray:
        """The boosters' input. Shared layout: only the (sample, class) rows ``rows`` (numbered as
        :func:`_share` orders them; default all), so a sample of them never builds the whole table.
        A sample's table columns (``extra``) go with each of its classes."""
        if self.shared_:
            rows = np.arange(len(X) * self.n_classes_) if rows is None else rows
            samples, classes = np.divmod(rows, self.n_classes_)
            probabilities = X[samples, :, classes]
        else:
            samples, probabilities = slice(None), X.reshape(len(X), -1)
        # In the shared layout a sample's summary goes with each of its classes.
        summary = [summary_features(X, self.multilabel_)[samples]] if self.summary_features else []
        table = [] if extra is None else [extra[samples]]
        return np.hstack([probabilities, *summary, *table])

    def _train(self, features: np.ndarray, target: np.ndarray, objective: dict[str, Any]):
        """A booster for one target, or the target's mean when it is constant (a multilabel
        class absent from the training folds), which LightGBM cannot fit."""
        import lightgbm

        if np.unique(target).size < 2 and objective["objective"] == "binary":
            return float(target.mean())
        params = {**LIGHTGBM_DEFAULTS, "seed": self.seed, **(self.params or {}), **objective}
        patience = params.pop("early_stopping_round")
        if patience:
            # In the shared layout a sample's classes may fall on both sides of this split; it
            # only picks the number of rounds, and the outer CV stays split by sample.
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


def _share(X: np.ndarray) -> np.ndarray:
    """``(n, models, classes)`` to ``(n * classes, models)``: a row per (sample, class)."""
    return X.transpose(0, 2, 1).reshape(-1, X.shape[1])


def _sample_negatives(target: np.ndarray, max_negatives: int | None, seed: int) -> tuple[np.ndarray, float]:
    """Indices of every positive row and of at most ``max_negatives`` negative rows drawn
    uniformly (in their original order), and the share of negatives kept."""
    negatives = np.flatnonzero(target == 0)
    if max_negatives is None or len(negatives) <= max_negatives:
        return np.arange(len(target)), 1.0
    kept = np.random.default_rng(seed).choice(negatives, size=max_negatives, replace=False)
    return np.union1d(np.flatnonzero(target != 0), kept), max_negatives / len(negatives)


def _undo_negative_sampling(proba: np.ndarray, negative_rate: float) -> np.ndarray:
    """Probabilities learnt with a share ``negative_rate`` of the negatives, at the full data's
    odds: keeping a share r of the negatives multiplies the odds by 1 / r."""
    if negative_rate == 1.0:  # nothing was sampled: keep the booster's output to the last bit
        return proba
    return proba * negative_rate / (proba * negative_rate + 1.0 - proba)


def _unshare(scores: np.ndarray, n_samples: int, multilabel: bool) -> np.ndarray:
    """Per-(sample, class) probabilities back to ``(n, classes)``; single-label rows sum to 1."""
    proba = scores.reshape(n_samples, -1)
    return proba if multilabel else normalise_rows(proba)


def _log_features(X: np.ndarray, shared: bool, extra: np.ndarray | None = None) -> np.ndarray:
    """The log-probabilities in the layout's rows, and the sample's table columns beside them."""
    logs = np.log(np.clip(X, EPS, 1.0))
    features = _share(logs) if shared else logs.reshape(len(X), -1)
    if extra is None:
        return features
    return np.hstack([features, np.repeat(extra, X.shape[2], axis=0) if shared else extra])


def _inner_split(target: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices to train on and to early-stop on, stratified where every class allows it."""
    rows = np.arange(len(target))
    try:
        return tuple(train_test_split(rows, test_size=fraction, random_state=seed, stratify=target))
    except ValueError:  # a class with a single row cannot be split in two
        return tuple(train_test_split(rows, test_size=fraction, random_state=seed))
