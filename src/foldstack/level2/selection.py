"""Choosing the level-2 candidate: each one scored by cross-validation on the base models' own
folds, and the leaderboard of their scores.

CV is nested so that no label leaks into level two: for fold k a fresh candidate is fitted on
the OOF rows of the other folds and predicts fold k. CV scores the recipe; the stack stage then
fits the chosen recipe on every OOF row and saves that model, so new test predictions need only
the saved model (:mod:`foldstack.contracts.stack_output`). :meth:`CVResult.predict_proba`, the
mean of the K fold models, stays for inspecting a CV run.

What CV scores is what is submitted: single-label outputs are renormalised row by row
(:func:`as_submitted`) before they are scored, not after.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import clone

from foldstack.core.config import PipelineConfig
from foldstack.core.errors import FoldstackError
from foldstack.core.metrics import Metric, is_multilabel, normalise_rows
from foldstack.level2 import candidates
from foldstack.level2.base import Level2Estimator


class StackError(FoldstackError):
    """The stacking settings cannot be honoured for this pipeline."""


@dataclass(frozen=True)
class CVResult:
    """One candidate's cross-validation.

    Attributes:
        oof: its out-of-fold probabilities ``(n, C)``, as submitted.
        fold_scores: the metric on each fold, in the order of ``folds``.
        folds: the fold values.
        models: the candidate fitted without each fold, in the same order.
        multilabel: whether rows are independent classes (never renormalised).
    """

    oof: np.ndarray
    fold_scores: np.ndarray
    folds: np.ndarray
    models: tuple[Level2Estimator, ...]
    multilabel: bool = False

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """The mean of the fold models' probabilities (the test-time prediction), as submitted."""
        return as_submitted(np.mean([model.predict_proba(X) for model in self.models], axis=0), self.multilabel)


def as_submitted(proba: np.ndarray, multilabel: bool) -> np.ndarray:
    """A candidate's output as the submission will hold it: single-label rows sum to 1."""
    return proba if multilabel else normalise_rows(proba)


def candidate_names(cfg: PipelineConfig, metric: Metric) -> list[str]:
    """The candidates to score: ``stack.candidates`` (default: every registered one that applies
    to the metric), plus a forced one.

    Raises:
        StackError: a named candidate does not apply to the metric.
    """
    requested = cfg.stack.candidates or [name for name in candidates.names() if candidates.get(name).applies(metric)]
    if cfg.stack.force and cfg.stack.force not in requested:
        requested = [*requested, cfg.stack.force]
    for name in requested:  # the config has checked that each name is registered
        if not candidates.get(name).applies(metric):
            raise StackError(f"stack: candidate {name!r} does not apply to metric {metric.name!r}")
    return list(requested)


def cross_validate(estimator: Level2Estimator, X: np.ndarray, y: np.ndarray, fold: np.ndarray,
                   metric: Metric) -> CVResult:
    """Fit a clone of ``estimator`` without each fold and score it on that fold.

    Args:
        estimator: an unfitted level-2 estimator.
        X: base-model OOF probabilities ``(n, n_models, C)``.
        y: targets (class indices, or a 0/1 matrix for multilabel).
        fold: each row's fold, as the base models used it.
        metric: scores each fold.
    """
    multilabel = is_multilabel(y)
    folds = np.unique(fold)
    oof = np.zeros((len(X), X.shape[2]))
    scores, models = [], []
    for k in folds:
        held = fold == k
        model = clone(estimator).fit(X[~held], y[~held])
        oof[held] = as_submitted(model.predict_proba(X[held]), multilabel)
        scores.append(metric(y[held], oof[held]))
        models.append(model)
    return CVResult(oof, np.array(scores), folds, tuple(models), multilabel)


def leaderboard(results: dict[str, CVResult], metric: Metric, force: str | None = None) -> pd.DataFrame:
    """One row per candidate, best CV mean first, with the chosen one marked.

    ``cv_std`` is the sample standard deviation over folds.
    """
    rows = []
    for name, result in results.items():
        folds = {f"fold_{k}": score for k, score in zip(result.folds, result.fold_scores)}
        rows.append({"candidate": name, "cv_mean": result.fold_scores.mean(),
                     "cv_std": result.fold_scores.std(ddof=1), **folds})
    board = pd.DataFrame(rows).sort_values("cv_mean", ascending=not metric.greater_is_better,
                                           kind="stable", ignore_index=True)
    chosen = force or board["candidate"].iloc[0]
    return board.assign(chosen=board["candidate"] == chosen)
