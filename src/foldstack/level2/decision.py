"""Decision rules fitted on level-two OOF rows: how a candidate's output becomes hard predictions.

One mechanism, two rules (as scikit-learn's ``TunedThresholdClassifierCV`` is one wrapper for
any estimator and metric): multilabel **thresholds** (:mod:`foldstack.level2.thresholds`, a
probability per class) and an ordinal task's **cut points** (:mod:`foldstack.level2.ordinal`,
a score cut into grades). A :class:`Rule` knows its plain values (0.5 per class; rounding's
0.5, 1.5, ...) and how to fit them on rows to maximise the metric; :func:`choose` cross-validates
it and fits the values that go on; :func:`foldstack.core.metrics.hard_predictions` is the one
place the values are applied (the CV here, ``submit``, the report, ``predict --images``), and
:mod:`foldstack.contracts.stack_output` the one place they are saved (``chosen.json``).

The CV is nested: fold k is scored at values fitted without fold k. The rows they are fitted on
are level-two predictions too, and those must come from level-two models that never saw fold k
either: the candidate's own OOF rows of fold j were predicted by a model fitted on every fold
but j, fold k included, so values fitted on them would carry fold k's labels one step removed.
:func:`foldstack.level2.selection.cross_validate` therefore hands :func:`choose` an inner OOF per
fold k (``inner[k]``: the rows of every other fold j, each predicted by a model fitted on the
folds that are neither j nor k); without it (a plain OOF table, no level-two model) the values
are fitted on the other folds' rows of ``output``. (The base models' OOF under both are still
made by models that saw fold k: that level-one overlap is stacking's own, and the same in every
candidate's CV.) The values that go on to ``submit`` are then fitted on every OOF row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from foldstack.core.metrics import Metric

#: The setting that fits nothing: the rule's plain values.
FIXED = "fixed"

#: The setting that fits every mode of a rule and keeps the one with the best CV.
AUTO = "auto"


@dataclass(frozen=True)
class Rule:
    """A decision rule: what it is called, its plain values, and its fit.

    Attributes:
        name: its key in ``chosen.json`` and its leaderboard column (``thresholds``, ``cuts``).
        modes: the ways it can be fitted, in the order ``auto`` tries them (a tie keeps the first).
        plain: ``plain(n_classes) -> values``: the values that fit nothing (0.5 per class; rounding).
        fit: ``fit(y, output, metric, modes, n_classes) -> {mode: values}``: each mode's values
            fitted on these rows to maximise ``metric`` (one call serves every mode, so a rule
            can share its work between them).
        per_class: its values are one per class (saved by class name), not an ordered list.
    """

    name: str
    modes: tuple[str, ...]
    plain: Callable[[int], np.ndarray]
    fit: Callable[[np.ndarray, np.ndarray, Metric, tuple[str, ...], int], dict[str, np.ndarray]]
    per_class: bool = False


@dataclass(frozen=True)
class Decision:
    """A rule's values as a setting gives them, and their CV.

    Attributes:
        rule: the rule's name.
        mode: how the values were fitted (``fixed`` where not; what ``auto`` chose).
        values: fitted on every row (the ones to submit with).
        fold_scores: the metric on each fold (in the order of ``np.unique(fold)``), at values
            fitted without that fold (nested, see the module's docstring).
        rounded_scores: each fold's metric at the plain values.
        cv: each fitted mode's CV mean where ``auto`` compared them; empty otherwise.
    """

    rule: str
    mode: str
    values: np.ndarray
    fold_scores: np.ndarray
    rounded_scores: np.ndarray
    cv: dict[str, float] = field(default_factory=dict)


def choose(rule: Rule, setting: str, y: np.ndarray, output: np.ndarray, fold: np.ndarray, metric: Metric,
           n_classes: int | None = None, inner: dict | None = None) -> Decision:
    """The values of ``setting`` for ``output`` and their nested CV.

    Args:
        rule: the decision rule.
        setting: ``fixed``, one of ``rule.modes``, or ``auto`` (every mode, the best CV kept).
        y: the targets (grade indices; a 0/1 matrix for multilabel).
        output: the candidate's OOF output ``(n, C)`` (ordinal: scores ``(n, 1)``).
        fold: each row's fold.
        metric: what the values maximise and the CV scores.
        n_classes: the number of classes (grades); default ``output``'s columns, or for a score
            the grades ``y`` reaches.
        inner: for each fold k, the output for the rows of the other folds (in row order) made
            by level-two models that never saw fold k; None: ``output``'s own rows.
    """
    n_classes = _classes(y, output, n_classes)
    folds = np.unique(fold)
    plain = rule.plain(n_classes)
    rounded = _fold_scores(y, output, fold, metric, n_classes, {k: plain for k in folds})
    if setting == FIXED:
        return Decision(rule.name, FIXED, plain, rounded, rounded)
    modes = rule.modes if setting == AUTO else (setting,)
    fitted = {k: rule.fit(y[fold != k], output[fold != k] if inner is None else inner[k], metric, modes, n_classes)
              for k in folds}
    scores = {mode: _fold_scores(y, output, fold, metric, n_classes, {k: fitted[k][mode] for k in folds})
              for mode in modes}
    best = modes[0]
    for mode in modes[1:]:
        if metric.better(scores[mode].mean(), scores[best].mean()):
            best = mode
    cv = {mode: float(s.mean()) for mode, s in scores.items()} if setting == AUTO else {}
    return Decision(rule.name, best, rule.fit(y, output, metric, (best,), n_classes)[best], scores[best], rounded, cv)


def _classes(y: np.ndarray, output: np.ndarray, n_classes: int | None) -> int:
    if n_classes is not None:
        return n_classes
    return int(np.max(y)) + 1 if output.shape[1] == 1 and np.ndim(y) == 1 else output.shape[1]


def _fold_scores(y: np.ndarray, output: np.ndarray, fold: np.ndarray, metric: Metric, n_classes: int,
                 values: dict) -> np.ndarray:
    """The metric on each fold ``k`` at ``values[k]``."""
    return np.array([metric(y[fold == k], output[fold == k], values[k], n_classes=n_classes)
                     for k in np.unique(fold)])
