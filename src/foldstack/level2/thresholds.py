"""Multilabel thresholds fitted on the stacked OOF probabilities (``stack.thresholds``).

A multilabel class is predicted where its probability reaches its threshold. ``fixed`` keeps 0.5;
``global`` fits one threshold for every class; ``per_class`` fits one per class (coordinate
ascent from the best global threshold: each class in turn takes the grid value that scores best
with the others held, for :data:`PASSES` passes); ``auto`` fits both and keeps the one whose CV is
better. Thresholds are searched on :data:`GRID` and maximise the pipeline's metric, which must be
one of hard predictions (``Metric.thresholded``: f1/f2 micro, f1 macro, subset accuracy).

CV is nested, as :func:`foldstack.level2.selection.cross_validate` scores the candidates: the
thresholds scored on fold k are fitted on the other folds' OOF rows alone. (Those rows are the
level-two model's own OOF, made by models that saw fold k's rows at level two, as the candidates'
CV uses them.) The thresholds that go on to ``submit`` are then fitted on every OOF row.

Metrics that are F-beta of counts summed over every cell (``Metric.from_counts``) are searched
from per-class counts of positives and negatives at or above each grid value, made once per fold
(the other folds' counts are the total less the fold's): a sweep costs a few array sums, which
keeps thousands of classes (imet) tractable, and ``auto``'s nested CV costs one pass over the
probabilities (9.5 s for 20,000 rows x 1,000 classes on this 2-core machine, busy). Any other
metric is scored from scratch at each grid value (``per_class``: classes x 99 x passes scores).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from foldstack.core.metrics import THRESHOLD, Metric
from foldstack.level2.selection import StackError

#: The thresholds searched: 0.01 to 0.99 in steps of 0.01.
GRID = np.round(np.linspace(0.01, 0.99, 99), 2)

#: Coordinate-ascent passes over the classes for ``per_class``.
PASSES = 2

#: The fitted settings, in the order ``auto`` tries them (a tie keeps the first).
FITTED = ("global", "per_class")


@dataclass(frozen=True)
class Choice:
    """The thresholds a setting gives, and their CV.

    Attributes:
        mode: ``fixed``, ``global`` or ``per_class`` (what ``auto`` chose).
        values: one threshold per class, fitted on every row.
        fold_scores: the metric on each fold (in the order of ``np.unique(fold)``), with
            thresholds fitted on the other folds.
        cv: each fitted mode's CV mean (``auto`` compared them); empty otherwise.
    """

    mode: str
    values: np.ndarray
    fold_scores: np.ndarray
    cv: dict[str, float]


def check(setting: str, metric: Metric) -> None:
    """Raises StackError where ``setting`` fits thresholds for a metric they cannot change."""
    if setting != "fixed" and not metric.thresholded:
        raise StackError(f"stack.thresholds: {setting!r} fits thresholds for a metric of hard predictions "
                         f"(f1_micro, f2_micro, f1_macro, accuracy); metric {metric.name!r} does not use them")


def choose(y: np.ndarray, proba: np.ndarray, fold: np.ndarray, metric: Metric, setting: str) -> Choice:
    """The thresholds of ``setting`` for OOF probabilities ``proba`` and their nested CV.

    Args:
        y: the 0/1 label matrix ``(n, C)``.
        proba: OOF probabilities ``(n, C)``.
        fold: each row's fold.
        metric: what the thresholds maximise and CV scores.
        setting: ``fixed``, ``global``, ``per_class`` or ``auto``.
    """
    check(setting, metric)
    if setting == "fixed":
        fixed = np.full(proba.shape[1], THRESHOLD)
        return Choice("fixed", fixed, _fold_scores(y, proba, fold, metric, lambda k: fixed), {})
    whole, without = _sweeps(y, proba, fold, metric)
    modes = FITTED if setting == "auto" else (setting,)
    scores = {mode: _fold_scores(y, proba, fold, metric, lambda k: _search(without[k], metric, mode))
              for mode in modes}
    best = modes[0]
    for mode in modes[1:]:
        if metric.better(scores[mode].mean(), scores[best].mean()):
            best = mode
    cv = {mode: float(s.mean()) for mode, s in scores.items()} if setting == "auto" else {}
    return Choice(best, _search(whole, metric, best), scores[best], cv)


def cross_validate(y: np.ndarray, proba: np.ndarray, fold: np.ndarray, metric: Metric, mode: str) -> np.ndarray:
    """The metric on each fold with ``mode`` thresholds fitted on the other folds' rows."""
    _, without = _sweeps(y, proba, fold, metric)
    return _fold_scores(y, proba, fold, metric, lambda k: _search(without[k], metric, mode))


def fit(y: np.ndarray, proba: np.ndarray, metric: Metric, mode: str) -> np.ndarray:
    """Thresholds ``(C,)`` from :data:`GRID` that maximise (or minimise) ``metric`` on these rows.

    Of equally good grid values a class keeps the one nearest to where it was (0.5, then the
    global threshold), so a class these rows cannot tell apart stays put.
    """
    return _search(_sweeps(y, proba, np.zeros(len(y), int), metric)[0], metric, mode)


def _fold_scores(y: np.ndarray, proba: np.ndarray, fold: np.ndarray, metric: Metric,
                 fitted: Callable[[int], np.ndarray]) -> np.ndarray:
    """The metric on each fold ``k`` at the thresholds ``fitted(k)``."""
    return np.array([metric(y[fold == k], proba[fold == k], fitted(k)) for k in np.unique(fold)])


def _search(sweep: _CountSweep | _ScoreSweep, metric: Metric, mode: str) -> np.ndarray:
    n_classes = sweep.n_classes
    index = np.full(n_classes, _nearest(np.ones(len(GRID), bool), THRESHOLD))
    index[:] = _best(sweep.scores(index, np.arange(n_classes)), metric, index[0])
    if mode == "per_class":
        for _ in range(PASSES):
            for c in range(n_classes):
                index[c] = _best(sweep.scores(index, np.array([c])), metric, index[c])
    return GRID[index]


def _best(scores: np.ndarray, metric: Metric, current: int) -> int:
    """The grid index of the best score; of ties, the one nearest to ``current``."""
    signed = scores if metric.greater_is_better else -scores
    top = np.isclose(signed, signed.max(), rtol=0, atol=1e-12)
    return _nearest(top, GRID[current])


def _nearest(allowed: np.ndarray, value: float) -> int:
    candidates = np.flatnonzero(allowed)
    return int(candidates[np.argmin(np.abs(GRID[candidates] - value))])


def _sweeps(y: np.ndarray, proba: np.ndarray, fold: np.ndarray,
            metric: Metric) -> tuple[_CountSweep | _ScoreSweep, dict[int, _CountSweep | _ScoreSweep]]:
    """The search over every row, and over every row but fold k's for each fold k.

    Counts add up over rows, so for a metric of counts each fold's are made once and the others'
    are the total less that fold's: one pass over the probabilities serves the whole nested CV.
    """
    folds = np.unique(fold)
    if metric.from_counts is None:
        return (_ScoreSweep(y, proba, metric),
                {k: _ScoreSweep(y[fold != k], proba[fold != k], metric) for k in folds})
    parts = {k: _CountSweep.of(y[fold == k], proba[fold == k], metric) for k in folds}
    whole = sum(parts.values(), _CountSweep.empty(proba.shape[1], metric))
    return whole, {k: whole - parts[k] for k in folds}


class _ScoreSweep:
    """Scores the metric from scratch at each grid value."""

    def __init__(self, y: np.ndarray, proba: np.ndarray, metric: Metric) -> None:
        self.y, self.proba, self.metric = y, proba, metric
        self.n_classes = proba.shape[1]

    def scores(self, index: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """The metric with ``columns`` set to each grid value, the other classes at ``index``."""
        thresholds = GRID[index].copy()
        out = np.empty(len(GRID))
        for g, value in enumerate(GRID):
            thresholds[columns] = value
            out[g] = self.metric(self.y, self.proba, thresholds)
        return out


@dataclass(frozen=True)
class _CountSweep:
    """A metric of summed counts, scored from each class's rows at or above each grid value:
    ``tp[c, g]`` positives and ``fp[c, g]`` negatives of class c with probability >= GRID[g],
    and ``positives[c]``."""

    tp: np.ndarray
    fp: np.ndarray
    positives: np.ndarray
    from_counts: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

    @classmethod
    def of(cls, y: np.ndarray, proba: np.ndarray, metric: Metric) -> _CountSweep:
        n_classes, width = proba.shape[1], len(GRID) + 1
        # How many grid values each probability reaches: it is predicted at GRID[g] for g < that.
        reached = np.searchsorted(GRID, proba, side="right")
        # One histogram of (class, reached, label) over every cell.
        key = (np.arange(n_classes) * width + reached) * 2 + np.asarray(y, dtype=np.intp)
        counts = np.bincount(key.ravel(), minlength=n_classes * width * 2).reshape(n_classes, width, 2)
        at_or_above = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1][:, 1:]
        return cls(at_or_above[..., 1], at_or_above[..., 0], counts[..., 1].sum(axis=1), metric.from_counts)

    @classmethod
    def empty(cls, n_classes: int, metric: Metric) -> _CountSweep:
        zeros = np.zeros((n_classes, len(GRID)), np.int64)
        return cls(zeros, zeros, np.zeros(n_classes, np.int64), metric.from_counts)

    @property
    def n_classes(self) -> int:
        return len(self.positives)

    def __add__(self, other: _CountSweep) -> _CountSweep:
        return _CountSweep(self.tp + other.tp, self.fp + other.fp, self.positives + other.positives, self.from_counts)

    def __sub__(self, other: _CountSweep) -> _CountSweep:
        return _CountSweep(self.tp - other.tp, self.fp - other.fp, self.positives - other.positives, self.from_counts)

    def scores(self, index: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """The metric with ``columns`` set to each grid value, the other classes at ``index``."""
        rows = np.arange(len(index))
        others = np.ones(len(index), bool)
        others[columns] = False
        tp = self.tp[rows[others], index[others]].sum() + self.tp[columns].sum(axis=0)
        fp = self.fp[rows[others], index[others]].sum() + self.fp[columns].sum(axis=0)
        return self.from_counts(tp, fp, self.positives.sum() - tp)
