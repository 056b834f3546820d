"""Metrics registry: a pipeline names its metric; each metric knows its direction.

A metric scores class probabilities: ``metric(y_true, proba)`` where ``y_true`` holds class
indices (shape ``(n,)``; for multilabel a 0/1 matrix ``(n, C)``) and ``proba`` is ``(n, C)``.
Metrics on hard predictions take the arg-max class, or for multilabel every class whose
probability is at least 0.5.

An ordinal task's predictions are one score per row ``(n, 1)``, on the scale of the grade's
position (0 for the lowest grade): the metrics of grades (``on_grades``: accuracy, F1, quadratic
kappa) score the grades it is cut into (:func:`grades`: rounded, or cut at fitted cut points);
the others refuse a score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

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
        score: ``score(y_true, proba) -> float``.
        greater_is_better: the direction; :meth:`better` uses it.
        ranks: the score depends only on how each class column orders the rows (ROC AUC), so a
            rank average of models is a fair candidate for it.
        on_grades: the score depends only on the hard predictions, so it also scores an ordinal
            score's grades.
    """

    name: str
    score: Callable[[np.ndarray, np.ndarray], float]
    greater_is_better: bool
    ranks: bool = False
    on_grades: bool = False

    def __call__(self, y_true: np.ndarray, proba: np.ndarray, n_classes: int | None = None) -> float:
        """The score of ``proba``; an ordinal score ``(n, 1)`` is rounded to the nearest of
        ``n_classes`` grades first (default: the grades ``y_true`` reaches)."""
        y_true, proba = np.asarray(y_true), np.asarray(proba, dtype=np.float64)
        if is_score(y_true, proba):
            if not self.on_grades:
                raise ValueError(f"metric {self.name!r} needs class probabilities, not an ordinal score")
            n_classes = int(y_true.max()) + 1 if n_classes is None else n_classes
            proba = one_hot(grades(proba, n_classes), n_classes)
        return float(self.score(y_true, proba))

    def better(self, a: float, b: float) -> bool:
        """Whether score ``a`` beats score ``b``."""
        return a > b if self.greater_is_better else a < b


_REGISTRY: Registry[Metric] = Registry("metric")
register = _REGISTRY.register
names = _REGISTRY.names
get = _REGISTRY.get


def is_multilabel(y_true: np.ndarray) -> bool:
    """Multilabel targets are a 0/1 matrix; single-label targets a vector of class indices."""
    return np.ndim(y_true) == 2


def is_score(y_true: np.ndarray, proba: np.ndarray) -> bool:
    """Whether ``proba`` is an ordinal score: one column for single-label targets (a binary
    task's probabilities have two)."""
    return not is_multilabel(y_true) and np.ndim(proba) == 2 and np.shape(proba)[1] == 1


def rounding_cuts(n_classes: int) -> np.ndarray:
    """The cut points of plain rounding: 0.5, 1.5, ..., ``n_classes - 1.5``."""
    return np.arange(n_classes - 1) + 0.5


def grades(score: np.ndarray, n_classes: int, cuts: np.ndarray | None = None) -> np.ndarray:
    """Grade indices ``(n,)`` of an ordinal score ``(n, 1)`` or ``(n,)``: the number of cut
    points at or below each score (default :func:`rounding_cuts`), so 0 .. ``n_classes - 1``."""
    cuts = rounding_cuts(n_classes) if cuts is None else np.sort(np.asarray(cuts, dtype=np.float64))
    if len(cuts) != n_classes - 1:
        raise ValueError(f"{len(cuts)} cut points for {n_classes} grades; expected {n_classes - 1}")
    return np.searchsorted(cuts, np.asarray(score, dtype=np.float64).reshape(-1), side="right")


def hard_predictions(proba: np.ndarray, multilabel: bool) -> np.ndarray:
    """Predicted classes: arg-max indices, or for multilabel a 0/1 matrix (probability >= 0.5)."""
    if multilabel:
        return (proba >= THRESHOLD).astype(int)
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


def _accuracy(y_true: np.ndarray, proba: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score

    # For multilabel this is subset accuracy: a row counts only if every class is right.
    return accuracy_score(y_true, hard_predictions(proba, is_multilabel(y_true)))


def _log_loss(y_true: np.ndarray, proba: np.ndarray) -> float:
    from sklearn.metrics import log_loss

    proba = np.clip(proba, EPS, 1 - EPS)
    if is_multilabel(y_true):
        # Each class is its own binary problem: the mean binary cross-entropy over all cells.
        return log_loss(y_true.ravel(), proba.ravel(), labels=[0, 1])
    return log_loss(y_true, normalise_rows(proba), labels=np.arange(proba.shape[1]))


def _roc_auc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Binary ROC AUC for two single-label classes; otherwise the macro mean over classes."""
    from sklearn.metrics import roc_auc_score

    if not is_multilabel(y_true) and proba.shape[1] == 2:
        return roc_auc_score(y_true, proba[:, 1])
    truth = one_hot(y_true, proba.shape[1])
    # A fold may hold no example (or only examples) of a rare class; AUC is undefined there.
    defined = (truth.min(axis=0) == 0) & (truth.max(axis=0) == 1)
    if not defined.any():
        raise ValueError("ROC AUC is undefined: no class has both positive and negative rows")
    # One-vs-rest on the indicator matrix: sklearn's multiclass 'ovr' would demand rows summing
    # to 1, which a rank average does not give.
    return roc_auc_score(truth[:, defined], proba[:, defined], average="macro")


def _f1(average: str) -> Callable[[np.ndarray, np.ndarray], float]:
    def score(y_true: np.ndarray, proba: np.ndarray) -> float:
        from sklearn.metrics import f1_score

        labels = None if is_multilabel(y_true) else np.arange(proba.shape[1])
        predicted = hard_predictions(proba, is_multilabel(y_true))
        return f1_score(y_true, predicted, average=average, labels=labels, zero_division=0)

    return score


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


register(Metric("accuracy", _accuracy, greater_is_better=True, on_grades=True))
register(Metric("log_loss", _log_loss, greater_is_better=False))
register(Metric("roc_auc", _roc_auc, greater_is_better=True, ranks=True))
register(Metric("f1_micro", _f1("micro"), greater_is_better=True, on_grades=True))
register(Metric("f1_macro", _f1("macro"), greater_is_better=True, on_grades=True))
register(Metric("quadratic_kappa", _quadratic_kappa, greater_is_better=True, on_grades=True))
