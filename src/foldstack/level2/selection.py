"""Choosing the level-2 candidate: each one scored by cross-validation on the base models' own
folds, and the leaderboard of their scores.

CV is nested so that no label leaks into level two: for fold k a fresh candidate is fitted on
the OOF rows of the other folds and predicts fold k. CV scores the recipe; the stack stage then
fits the chosen recipe on every OOF row and saves that model, so new test predictions need only
the saved model (:mod:`foldstack.contracts.stack_output`). :meth:`CVResult.predict_proba`, the
mean of the K fold models, stays for inspecting a CV run.

What CV scores is what is submitted: single-label outputs are renormalised row by row
(:func:`as_submitted`) before they are scored, not after. An ordinal task's candidates give a
score, cut into grades at cut points that are themselves cross-validated
(:mod:`foldstack.level2.ordinal`): the CV reported is that of the scores and the cut points
together, as ``submit`` applies them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import clone

from foldstack.core.config import PipelineConfig
from foldstack.core.errors import FoldstackError
from foldstack.core.metrics import Metric, is_multilabel, is_score, normalise_rows
from foldstack.level2 import candidates
from foldstack.level2.base import Level2Estimator
from foldstack.level2.ordinal import cross_validated_cuts


class StackError(FoldstackError):
    """The stacking settings cannot be honoured for this pipeline."""


@dataclass(frozen=True)
class CVResult:
    """One candidate's cross-validation.

    Attributes:
        oof: its out-of-fold probabilities ``(n, C)``, as submitted (ordinal: scores ``(n, 1)``).
        fold_scores: the metric on each fold, in the order of ``folds`` (ordinal: of the grades
            cut at points fitted on the other folds).
        folds: the fold values.
        models: the candidate fitted without each fold, in the same order.
        multilabel: whether rows are independent classes (never renormalised).
        cuts: ordinal: the cut points fitted on every OOF score, to submit with; else None.
        rounded_scores: ordinal: each fold's metric of the scores rounded instead; else None.
    """

    oof: np.ndarray
    fold_scores: np.ndarray
    folds: np.ndarray
    models: tuple[Level2Estimator, ...]
    multilabel: bool = False
    cuts: np.ndarray | None = None
    rounded_scores: np.ndarray | None = None

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """The mean of the fold models' probabilities (the test-time prediction), as submitted."""
        return as_submitted(np.mean([model.predict_proba(X) for model in self.models], axis=0), self.multilabel)


def as_submitted(proba: np.ndarray, multilabel: bool) -> np.ndarray:
    """A candidate's output as the submission will hold it: single-label rows sum to 1 (an
    ordinal score, one column, stays as it is)."""
    return proba if multilabel or proba.shape[1] == 1 else normalise_rows(proba)


def candidate_names(cfg: PipelineConfig, metric: Metric) -> list[str]:
    """The candidates to score: ``stack.candidates`` (default: every registered one that applies
    to the metric and the task), plus a forced one.

    Raises:
        StackError: a named candidate does not apply to the metric, or needs class probabilities
            where the task is ordinal.
    """
    requested = cfg.stack.candidates or [name for name in candidates.names() if _applies(name, cfg, metric)]
    if cfg.stack.force and cfg.stack.force not in requested:
        requested = [*requested, cfg.stack.force]
    for name in requested:  # the config has checked that each name is registered
        if not candidates.get(name).applies(metric):
            raise StackError(f"stack: candidate {name!r} does not apply to metric {metric.name!r}")
        if cfg.task == "ordinal" and not candidates.get(name).scores:
            raise StackError(f"stack: candidate {name!r} needs class probabilities; task 'ordinal' has one "
                             f"score per model (candidates for it: {', '.join(ordinal_candidates())})")
    return list(requested)


def ordinal_candidates() -> list[str]:
    """The candidates that combine an ordinal task's scores."""
    return [name for name in candidates.names() if candidates.get(name).scores]


def left_out(cfg: PipelineConfig, metric: Metric) -> list[str]:
    """The registered candidates that apply to the metric but not to the task (those that need
    class probabilities, for an ordinal task), for the leaderboard to name."""
    return [name for name in candidates.names()
            if candidates.get(name).applies(metric) and not _applies(name, cfg, metric)]


def _applies(name: str, cfg: PipelineConfig, metric: Metric) -> bool:
    candidate = candidates.get(name)
    return candidate.applies(metric) and (cfg.task != "ordinal" or candidate.scores)


def cross_validate(estimator: Level2Estimator, X: np.ndarray, y: np.ndarray, fold: np.ndarray,
                   metric: Metric, n_classes: int | None = None) -> CVResult:
    """Fit a clone of ``estimator`` without each fold and score it on that fold.

    For an ordinal task (one score per model) the OOF scores are then cut into grades, each
    fold's at cut points fitted on the other folds' OOF scores, and the fold scores are those
    grades'; :attr:`CVResult.cuts` are fitted on every row.

    Args:
        estimator: an unfitted level-2 estimator.
        X: base-model OOF probabilities ``(n, n_models, C)`` (ordinal: scores ``(n, n_models, 1)``).
        y: targets (class indices, or a 0/1 matrix for multilabel).
        fold: each row's fold, as the base models used it.
        metric: scores each fold.
        n_classes: the number of grades of an ordinal task (default: those ``y`` reaches).
    """
    multilabel = is_multilabel(y)
    folds = np.unique(fold)
    oof = np.zeros((len(X), X.shape[2]))
    scores, models = [], []
    for k in folds:
        held = fold == k
        model = clone(estimator).fit(X[~held], y[~held])
        oof[held] = as_submitted(model.predict_proba(X[held]), multilabel)
        scores.append(metric(y[held], oof[held], n_classes=n_classes))
        models.append(model)
    if not is_score(y, oof):
        return CVResult(oof, np.array(scores), folds, tuple(models), multilabel)
    n_classes = int(y.max()) + 1 if n_classes is None else n_classes
    fold_scores, cuts = cross_validated_cuts(oof, y, fold, n_classes, metric)
    return CVResult(oof, fold_scores, folds, tuple(models), multilabel, cuts=cuts, rounded_scores=np.array(scores))


def leaderboard(results: dict[str, CVResult], metric: Metric, force: str | None = None) -> pd.DataFrame:
    """One row per candidate, best CV mean first, with the chosen one marked.

    ``cv_std`` is the sample standard deviation over folds. An ordinal task's board also has
    ``cv_rounded``: the CV mean of the scores rounded rather than cut at fitted points.
    """
    rows = []
    for name, result in results.items():
        folds = {f"fold_{k}": score for k, score in zip(result.folds, result.fold_scores)}
        rounded = {} if result.rounded_scores is None else {"cv_rounded": result.rounded_scores.mean()}
        rows.append({"candidate": name, "cv_mean": result.fold_scores.mean(),
                     "cv_std": result.fold_scores.std(ddof=1), **rounded, **folds})
    board = pd.DataFrame(rows).sort_values("cv_mean", ascending=not metric.greater_is_better,
                                           kind="stable", ignore_index=True)
    chosen = force or board["candidate"].iloc[0]
    return board.assign(chosen=board["candidate"] == chosen)
