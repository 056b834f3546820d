"""Metrics registry: a pipeline names its metric; each metric knows its direction.

A metric scores class probabilities: ``metric(y_true, proba)`` where ``y_true`` holds class
indices (shape ``(n,)``; for multilabel a 0/1 matrix ``(n, C)``) and ``proba`` is ``(n, C)``.
Metrics on hard predictions (``thresholded``) take the arg-max class, or for multilabel every
class whose probability reaches its threshold: 0.5, or ``metric(y_true, proba, thresholds)``
with one per class. :func:`hard_predictions` is the one place a level-two decision rule's values
(:mod:`foldstack.level2.decision`: multilabel thresholds, an ordinal score's cut points) are
applied.

Where Kaggle's scorer would fail on a fold, the metric is defined instead, so a CV fold always
has a score: a class column that is all 0 or all 1 in the fold has no ROC AUC and is left out of
the column mean (sklearn's ``roc_auc_score`` over all columns would raise); with no column
defined at all the metric raises ``ValueError``.

An ordinal task's predictions are one score per row ``(n, 1)``, on the scale of the grade's
position (0 for the lowest grade): the metrics of grades (``on_grades``: accuracy, F-beta,
quadratic kappa) score the grades it is cut into (:func:`grades`: rounded, or cut at the cut
points passed as ``thresholds``); the others refuse a score.

A regression task's targets are numbers (a float ``(n,)``: :func:`is_regression`) and its
predictions one value per row ``(n, 1)``: only the metrics of values (``on_values``: RMSE, MAE,
R²) score them, and they score nothing else.
"""

from __future__ import annotations

import importlib
import numbers
import re
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import numpy as np

from foldstack.core.errors import DataError
from foldstack.core.registry import Registry

#: Probabilities are clipped to [EPS, 1 - EPS] before a logarithm, so one confident miss costs a
#: large but finite loss.
EPS = 1e-15

#: A multilabel prediction holds every class whose probability reaches this.
THRESHOLD = 0.5


@dataclass(frozen=True)
class Metric:
    """A named score of ``(y_true, proba)``.

    Attributes:
        name: registry name, as a pipeline YAML writes it.
        score: ``score(y_true, proba) -> float``; ``score(y_true, proba, thresholds)`` where
            ``thresholded``.
        greater_is_better: the direction; :meth:`better` uses it.
        ranks: the score depends only on how each class column orders the rows (ROC AUC), so a
            rank average of models is a fair candidate for it.
        thresholded: the score is of hard predictions, so multilabel thresholds change it.
        from_counts: for a score of the confusion counts summed over every (row, class) cell
            (micro-averaged), ``from_counts(tp, fp, fn)`` on arrays of counts: what lets
            thresholds be searched without scoring every candidate from scratch.
        on_grades: the score depends only on the hard predictions, so it also scores an ordinal
            score's grades.
        on_values: the score of a regression: ``score(y_true, predicted)`` on two float vectors;
            such a metric scores only a regression's one-column predictions.
    """

    name: str
    score: Callable[..., float]
    greater_is_better: bool
    ranks: bool = False
    thresholded: bool = False
    from_counts: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None
    on_grades: bool = False
    on_values: bool = False

    def __call__(self, y_true: np.ndarray, proba: np.ndarray, thresholds: np.ndarray | None = None, *,
                 n_classes: int | None = None) -> float:
        """The score; ``thresholds`` (one per class, multilabel) matter only where ``thresholded``.
        An ordinal score ``(n, 1)`` is cut into one of ``n_classes`` grades first (default: the
        grades ``y_true`` reaches) at ``thresholds``, its cut points (default: rounding)."""
        y_true, proba = np.asarray(y_true), np.asarray(proba, dtype=np.float64)
        if self.on_values or is_regression(y_true):
            return self._of_values(y_true, proba)
        if is_score(y_true, proba):
            if not self.on_grades:
                raise ValueError(f"metric {self.name!r} needs class probabilities, not an ordinal score")
            n_classes = int(y_true.max()) + 1 if n_classes is None else n_classes
            proba = one_hot(hard_predictions(proba, False, thresholds, n_classes), n_classes)
            thresholds = None
        if self.thresholded:
            return float(self.score(y_true, proba, thresholds))
        return float(self.score(y_true, proba))

    def _of_values(self, y_true: np.ndarray, predicted: np.ndarray) -> float:
        """A regression's score: of the targets and the one prediction column."""
        if not self.on_values:
            raise ValueError(f"metric {self.name!r} needs classes; a regression is scored by "
                             f"{', '.join(name for name in names() if get(name).on_values)}")
        if not is_regression(y_true) or np.ndim(predicted) != 2 or np.shape(predicted)[1] != 1:
            raise ValueError(f"metric {self.name!r} scores a regression: numeric targets (n,) and one "
                             f"prediction column (n, 1), not targets {np.shape(y_true)} of {y_true.dtype} "
                             f"and predictions {np.shape(predicted)}")
        return float(self.score(y_true.astype(np.float64), predicted[:, 0]))

    def better(self, a: float, b: float) -> bool:
        """Whether score ``a`` beats score ``b``."""
        return a > b if self.greater_is_better else a < b


_REGISTRY: Registry[Metric] = Registry("metric")
register = _REGISTRY.register
names = _REGISTRY.names


def get(name: str) -> Metric:
    """The registered metric ``name``, or the one a pipeline's ``metric: {callable: ...}`` names
    (:func:`callable_name`), imported now: each process (a fold's too) builds it from the name
    alone, so nothing needs registering in every child.

    Raises:
        UnknownNameError: an unknown registry name (the message lists the known ones).
        ValueError: a callable that cannot be imported, or is not callable (one line).
    """
    found = _CALLABLE.fullmatch(name)
    if found is None:
        return _REGISTRY.get(name)
    path, direction, needs = found.groups()
    module, _, attribute = path.partition(":")
    try:
        function = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"metric callable {path!r} cannot be imported ({error})") from None
    if not callable(function):
        raise ValueError(f"metric callable {path!r} is not a function")
    on_labels = needs == "labels"
    return Metric(name, partial(_call_user_metric, function, path, on_labels), greater_is_better=direction == "greater",
                  thresholded=on_labels)


#: A pipeline's own metric: ``package.module:function (greater|lower is better, on labels|probabilities)``.
_CALLABLE = re.compile(r"([\w.]+:\w+) \((greater|lower) is better, on (labels|probabilities)\)")


def callable_name(path: str, greater_is_better: bool, needs: str) -> str:
    """The metric name of a callable ``package.module:function`` (a pipeline's ``metric:
    {callable, greater_is_better, needs}``): it says everything :func:`get` needs."""
    return f"{path} ({'greater' if greater_is_better else 'lower'} is better, on {needs})"


def _call_user_metric(function: Callable[..., Any], path: str, on_labels: bool, y_true: np.ndarray,
                      proba: np.ndarray, thresholds: np.ndarray | None = None) -> float:
    """``function(y_true, predictions)``: hard predictions (``needs: labels``), or probabilities
    (a binary task's positive column alone, as Kaggle's scorers take it)."""
    if on_labels:
        predictions = hard_predictions(proba, is_multilabel(y_true), thresholds)
    else:
        predictions = proba[:, 1] if not is_multilabel(y_true) and proba.shape[1] == 2 else proba
    value = function(y_true, predictions)
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DataError(f"metric {path}: returned {value!r}, not a number")
    return float(value)


def is_multilabel(y_true: np.ndarray) -> bool:
    """Multilabel targets are a 0/1 matrix; single-label targets a vector of class indices."""
    return np.ndim(y_true) == 2


def is_regression(y_true: np.ndarray) -> bool:
    """Regression targets are float numbers ``(n,)``; class indices and grades are integers."""
    return np.ndim(y_true) == 1 and np.asarray(y_true).dtype.kind == "f"


def is_score(y_true: np.ndarray, proba: np.ndarray) -> bool:
    """Whether ``proba`` is an ordinal score: one column for single-label targets (a binary
    task's probabilities have two) that are grades, not a regression's numbers."""
    return (not is_multilabel(y_true) and not is_regression(y_true) and np.ndim(proba) == 2
            and np.shape(proba)[1] == 1)


def rounding_cuts(n_classes: int) -> np.ndarray:
    """The cut points of plain rounding: 0.5, 1.5, ..., ``n_classes - 1.5``."""
    return np.arange(n_classes - 1) + 0.5


def grades(score: np.ndarray, n_classes: int, cuts: np.ndarray | None = None) -> np.ndarray:
    """Grade indices ``(n,)`` of an ordinal score ``(n, 1)`` or ``(n,)``: the number of cut
    points at or below each score (default :func:`rounding_cuts`), so 0 .. ``n_classes - 1``."""
    if cuts is not None and np.ndim(cuts) != 1:
        raise ValueError(f"cut points must be a list of {n_classes - 1} numbers, not {cuts!r}")
    cuts = rounding_cuts(n_classes) if cuts is None else np.sort(np.asarray(cuts, dtype=np.float64))
    if len(cuts) != n_classes - 1:
        raise ValueError(f"{len(cuts)} cut points for {n_classes} grades; expected {n_classes - 1}")
    return np.searchsorted(cuts, np.asarray(score, dtype=np.float64).reshape(-1), side="right")


def hard_predictions(proba: np.ndarray, multilabel: bool, thresholds: np.ndarray | None = None,
                     n_classes: int | None = None) -> np.ndarray:
    """Predicted classes, at a decision rule's values ``thresholds`` where there is one.

    Arg-max indices; for multilabel a 0/1 matrix (probability at or above its class's threshold:
    ``thresholds``, one per class, default :data:`THRESHOLD`); for an ordinal score (one column,
    single-label) grade indices, cut at ``thresholds``, its ``n_classes - 1`` cut points
    (default: rounding; ``n_classes`` defaults to one more than the cut points).
    """
    proba = np.asarray(proba, dtype=np.float64)
    if multilabel:
        return (proba >= (THRESHOLD if thresholds is None else np.asarray(thresholds))).astype(int)
    if proba.ndim == 2 and proba.shape[1] == 1:
        if n_classes is None and thresholds is None:
            raise ValueError("an ordinal score needs its number of grades or its cut points")
        return grades(proba, len(thresholds) + 1 if n_classes is None else n_classes, thresholds)
    return proba.argmax(axis=1)


def normalise_rows(proba: np.ndarray) -> np.ndarray:
    """Single-label probabilities scaled so that each row sums to 1 (the one place rows are
    renormalised: averaged float32 softmax outputs drift from 1, a rank average is not a
    distribution at all)."""
    return proba / proba.sum(axis=1, keepdims=True)


def one_hot(y_true: np.ndarray, n_classes: int) -> np.ndarray:
    """``y_true`` as a 0/1 matrix ``(n, n_classes)``; a multilabel matrix is returned as it is."""
    if is_multilabel(y_true):
        return np.asarray(y_true, dtype=int)
    return np.eye(n_classes, dtype=int)[np.asarray(y_true, dtype=int)]


def fbeta_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, beta: float) -> np.ndarray:
    """F-beta of confusion counts (arrays broadcast): ``(1 + b^2) tp / ((1 + b^2) tp + b^2 fn +
    fp)``, 0 where nothing is predicted nor true (sklearn's ``zero_division=0``)."""
    tp, fp, fn = (np.asarray(count, dtype=np.float64) for count in (tp, fp, fn))
    numerator = (1 + beta**2) * tp
    denominator = numerator + beta**2 * fn + fp
    return np.divide(numerator, denominator, out=np.zeros(np.broadcast(tp, fp, fn).shape), where=denominator > 0)


def _accuracy(y_true: np.ndarray, proba: np.ndarray, thresholds: np.ndarray | None = None) -> float:
    # For multilabel this is subset accuracy: a row counts only if every class is right.
    right = hard_predictions(proba, is_multilabel(y_true), thresholds) == y_true
    return float(right.all(axis=1).mean() if right.ndim == 2 else right.mean())


def confusion_counts(y_true: np.ndarray, proba: np.ndarray,
                     thresholds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class: true positives, false positives and false negatives of the hard predictions,
    counted on the one-hot (or multilabel) matrices."""
    n_classes = proba.shape[1]
    truth = one_hot(y_true, n_classes).astype(bool)
    predicted = one_hot(hard_predictions(proba, is_multilabel(y_true), thresholds), n_classes).astype(bool)
    tp = (truth & predicted).sum(axis=0)
    return tp, predicted.sum(axis=0) - tp, truth.sum(axis=0) - tp


def _log_loss(y_true: np.ndarray, proba: np.ndarray) -> float:
    from sklearn.metrics import log_loss

    proba = np.clip(proba, EPS, 1 - EPS)
    if is_multilabel(y_true):
        # Each class is its own binary problem: the mean binary cross-entropy over all cells.
        return log_loss(y_true.ravel(), proba.ravel(), labels=[0, 1])
    return log_loss(y_true, normalise_rows(proba), labels=np.arange(proba.shape[1]))


def _roc_auc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Binary ROC AUC for two single-label classes; otherwise the mean column AUC."""
    from sklearn.metrics import roc_auc_score

    if not is_multilabel(y_true) and proba.shape[1] == 2:
        return roc_auc_score(y_true, proba[:, 1])
    return _mean_column_auc(y_true, proba)


def _mean_column_auc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """The mean over class columns of each column's ROC AUC (plant-pathology-2020, ranzcr),
    over the columns defined in these rows (see the module's docstring)."""
    from sklearn.metrics import roc_auc_score

    truth = one_hot(y_true, proba.shape[1])
    # A fold may hold no example (or only examples) of a rare class; AUC is undefined there.
    defined = (truth.min(axis=0) == 0) & (truth.max(axis=0) == 1)
    if not defined.any():
        raise ValueError("ROC AUC is undefined: no class has both positive and negative rows")
    # One-vs-rest on the indicator matrix: sklearn's multiclass 'ovr' would demand rows summing
    # to 1, which a rank average does not give.
    return roc_auc_score(truth[:, defined], proba[:, defined], average="macro")


def _fbeta(beta: float, average: str) -> Callable[..., float]:
    """F-beta of the hard predictions. ``micro``: of the confusion counts summed over every (row,
    class) cell of the label matrix (single-label: the one-hot matrices, where it equals
    accuracy); ``macro``: the mean of every class's own F-beta (0 for a class neither true nor
    predicted, as sklearn's ``zero_division=0``)."""

    def score(y_true: np.ndarray, proba: np.ndarray, thresholds: np.ndarray | None = None) -> float:
        tp, fp, fn = confusion_counts(y_true, proba, thresholds)
        if average == "micro":
            return float(fbeta_from_counts(tp.sum(), fp.sum(), fn.sum(), beta))
        return float(fbeta_from_counts(tp, fp, fn, beta).mean())

    return score


def map_at_k(y_true: np.ndarray, proba: np.ndarray, k: int) -> float:
    """Mean average precision at ``k`` with one true class per row: a row scores ``1 / rank`` of
    its true class among the classes ordered by probability (ties: the lower class index first),
    0 when it is not in the top ``k``."""
    if is_multilabel(y_true):
        raise ValueError("MAP@k needs one true class per row, not multilabel")
    # A stable sort of the negated scores puts equal probabilities in class order.
    order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    hits = order == np.asarray(y_true, dtype=int)[:, None]
    return float((hits / np.arange(1, order.shape[1] + 1)).sum(axis=1).mean())


def _quadratic_kappa(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Cohen's kappa with quadratic weights over the classes in order (scikit-learn's
    ``cohen_kappa_score(..., weights="quadratic")``, NaN where undefined). Computed from the
    confusion matrix here: an ordinal task's cut points are searched by hundreds of calls, and
    scikit-learn's input checks made each one a hundred times slower."""
    if is_multilabel(y_true):
        raise ValueError("quadratic weighted kappa needs ordered single-label classes, not multilabel")
    n = proba.shape[1]
    observed = np.bincount(np.asarray(y_true, dtype=np.int64) * n + proba.argmax(axis=1),
                           minlength=n * n).reshape(n, n).astype(np.float64)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / max(observed.sum(), 1.0)
    weights = (np.arange(n)[:, None] - np.arange(n)[None, :]) ** 2.0
    denominator = (weights * expected).sum()
    return float(1.0 - (weights * observed).sum() / denominator) if denominator else float("nan")


def partial_auc(y_true: np.ndarray, proba: np.ndarray, min_tpr: float = 0.8) -> float:
    """The area under the ROC curve above ``min_tpr`` (0 to ``1 - min_tpr``): ISIC 2024's
    primary metric at 80% TPR, computed as its published scorer does (labels and scores
    flipped, the ROC cut at ``max_fpr = 1 - min_tpr`` with one interpolated point)."""
    from sklearn.metrics import auc, roc_curve

    if is_multilabel(y_true) or proba.shape[1] != 2:
        raise ValueError("partial AUC needs a binary task")
    max_fpr = 1.0 - min_tpr
    fpr, tpr, _ = roc_curve(1 - np.asarray(y_true), -proba[:, 1])
    stop = np.searchsorted(fpr, max_fpr, "right")
    edge = np.interp(max_fpr, fpr[stop - 1:stop + 1], tpr[stop - 1:stop + 1])
    return float(auc(np.append(fpr[:stop], max_fpr), np.append(tpr[:stop], edge)))


def _balanced_accuracy(y_true: np.ndarray, proba: np.ndarray, thresholds: np.ndarray | None = None) -> float:
    """The mean over the classes present of each one's recall (sklearn's balanced accuracy)."""
    if is_multilabel(y_true):
        raise ValueError("balanced accuracy needs one class per row, not multilabel")
    tp, _, fn = confusion_counts(y_true, proba, thresholds)
    present = (tp + fn) > 0
    return float((tp[present] / (tp + fn)[present]).mean())


register(Metric("accuracy", _accuracy, greater_is_better=True, thresholded=True, on_grades=True))
register(Metric("log_loss", _log_loss, greater_is_better=False))
register(Metric("roc_auc", _roc_auc, greater_is_better=True, ranks=True))
register(Metric("mean_column_auc", _mean_column_auc, greater_is_better=True, ranks=True))
register(Metric("f1_micro", _fbeta(1.0, "micro"), greater_is_better=True, thresholded=True,
                from_counts=partial(fbeta_from_counts, beta=1.0), on_grades=True))
register(Metric("f2_micro", _fbeta(2.0, "micro"), greater_is_better=True, thresholded=True,
                from_counts=partial(fbeta_from_counts, beta=2.0), on_grades=True))
register(Metric("f1_macro", _fbeta(1.0, "macro"), greater_is_better=True, thresholded=True, on_grades=True))
register(Metric("quadratic_kappa", _quadratic_kappa, greater_is_better=True, on_grades=True))
register(Metric("pauc_80", partial_auc, greater_is_better=True, ranks=True))
register(Metric("balanced_accuracy", _balanced_accuracy, greater_is_better=True, thresholded=True, on_grades=True))
register(Metric("map_at_5", partial(map_at_k, k=5), greater_is_better=True))


def _rmse(y_true: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.sqrt(np.mean((y_true - predicted) ** 2)))


def _mae(y_true: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(np.abs(y_true - predicted)))


def _r2(y_true: np.ndarray, predicted: np.ndarray) -> float:
    """The coefficient of determination (scikit-learn's ``r2_score``): 1 - SSE / SST; NaN
    where the targets are constant (SST = 0)."""
    total = float(np.sum((y_true - y_true.mean()) ** 2))
    return 1.0 - float(np.sum((y_true - predicted) ** 2)) / total if total else float("nan")


register(Metric("rmse", _rmse, greater_is_better=False, on_values=True))
register(Metric("mae", _mae, greater_is_better=False, on_values=True))
register(Metric("r2", _r2, greater_is_better=True, on_values=True))
