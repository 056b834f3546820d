"""Multilabel thresholds fitted on the stacked OOF probabilities (``stack.thresholds``).

A multilabel class is predicted where its probability reaches its threshold. ``fixed`` keeps 0.5;
``global`` fits one threshold for every class; ``per_class`` fits one per class (coordinate
ascent from the best global threshold: each class in turn takes the grid value that scores best
with the others held, for :data:`PASSES` passes); ``auto`` fits both and keeps the one whose CV is
better. Thresholds are searched on :data:`GRID` and maximise the pipeline's metric, which must be
one of hard predictions (``Metric.thresholded``: f1/f2 micro, f1 macro, subset accuracy).

Thresholds are a rule of :mod:`foldstack.level2.decision` (:data:`RULE`): the stack stage's CV
scores each candidate at thresholds fitted without the fold it scores, on level-two predictions
of models that never saw that fold either; the thresholds that go on to ``submit`` are then
fitted on every OOF row.

Metrics that are F-beta of counts summed over every cell (``Metric.from_counts``) are searched
from per-class counts of positives and negatives at or above each grid value, made once per fit
(and shared by ``auto``'s two modes): a sweep costs a few array sums, which keeps thousands of
classes (imet) tractable; the nested CV makes them once per fold and once on every row. Any
other metric is scored from scratch at each grid value (``per_class``: classes x 99 x passes
scores).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from foldstack.core.metrics import THRESHOLD, Metric
from foldstack.level2.base import StackError
from foldstack.level2.decision import FIXED, Rule

#: The thresholds searched: 0.01 to 0.99 in steps of 0.01.
GRID = np.round(np.linspace(0.01, 0.99, 99), 2)

#: Coordinate-ascent passes over the classes for ``per_class``.
PASSES = 2

#: The fitted settings, in the order ``auto`` tries them (a tie keeps the first).
FITTED = ("global", "per_class")


def check(setting: str, metric: Metric) -> None:
    """Raises StackError where ``setting`` fits thresholds for a metric they cannot change."""
    if setting != FIXED and not metric.thresholded:
        raise StackError(f"stack.thresholds: {setting!r} fits thresholds for a metric of hard predictions "
                         f"(f1_micro, f2_micro, f1_macro, accuracy); metric {metric.name!r} does not use them")


def fit(y: np.ndarray, proba: np.ndarray, metric: Metric, mode: str) -> np.ndarray:
    """Thresholds ``(C,)`` from :data:`GRID` that maximise (or minimise) ``metric`` on these rows.

    Of equally good grid values a class keeps the one nearest to where it was (0.5, then the
    global threshold), so a class these rows cannot tell apart stays put.
    """
    return _fit_modes(y, proba, metric, (mode,))[mode]


def _fit_modes(y: np.ndarray, proba: np.ndarray, metric: Metric, modes: tuple[str, ...],
               n_classes: int | None = None) -> dict[str, np.ndarray]:
    """Each mode's thresholds on these rows, from one sweep (the rule's ``fit``)."""
    sweep = _ScoreSweep(y, proba, metric) if metric.from_counts is None else _CountSweep.of(y, proba, metric)
    return {mode: _search(sweep, metric, mode) for mode in modes}


#: Thresholds as a decision rule: 0.5 per class, or fitted (``global``, ``per_class``).
RULE = Rule("thresholds", FITTED, lambda n_classes: np.full(n_classes, THRESHOLD), _fit_modes, per_class=True)


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

    @property
    def n_classes(self) -> int:
        return len(self.positives)

    def scores(self, index: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """The metric with ``columns`` set to each grid value, the other classes at ``index``."""
        rows = np.arange(len(index))
        others = np.ones(len(index), bool)
        others[columns] = False
        tp = self.tp[rows[others], index[others]].sum() + self.tp[columns].sum(axis=0)
        fp = self.fp[rows[others], index[others]].sum() + self.fp[columns].sum(axis=0)
        return self.from_counts(tp, fp, self.positives.sum() - tp)
