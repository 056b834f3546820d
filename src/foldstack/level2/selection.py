"""Choosing the level-2 candidate: each one scored by cross-validation on the base models' own
folds, and the leaderboard of their scores.

CV is nested so that no label leaks into level two: for fold k a fresh candidate is fitted on
the OOF rows of the other folds and predicts fold k. CV scores the recipe; the stack stage then
fits the chosen recipe on every OOF row and saves that model, so new test predictions need only
the saved model (:mod:`foldstack.contracts.stack_output`). :meth:`CVResult.predict_proba`, the
mean of the K fold models, stays for inspecting a CV run.

What CV scores is what is submitted: single-label outputs are renormalised row by row
(:func:`as_submitted`) before they are scored, not after. Where a decision rule turns the output
into hard predictions (:mod:`foldstack.level2.decision`: multilabel thresholds, an ordinal
score's cut points), the CV reported is that of the candidate and its rule together, as
``submit`` applies them: the rule's values are themselves cross-validated, fitted for fold k on
an inner OOF of level-two models that never saw fold k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import clone

from foldstack.core.config import WITH_FEATURES, PipelineConfig
from foldstack.core.metrics import Metric, is_multilabel, is_score, normalise_rows
from foldstack.level2 import candidates, decision, ordinal, thresholds
from foldstack.level2.base import Level2Estimator, StackError
from foldstack.level2.decision import Decision, Rule

#: The decision rules, each under its own name (``chosen.json``'s key).
RULES = {rule.name: rule for rule in (thresholds.RULE, ordinal.RULE)}


@dataclass(frozen=True)
class CVResult:
    """One candidate's cross-validation.

    Attributes:
        oof: its out-of-fold probabilities ``(n, C)``, as submitted (ordinal: scores ``(n, 1)``).
        fold_scores: the metric on each fold, in the order of ``folds`` (with a decision rule: at
            its values fitted without that fold).
        folds: the fold values.
        models: the candidate fitted without each fold, in the same order.
        multilabel: whether rows are independent classes (never renormalised).
        decision: the decision rule's values (multilabel thresholds, ordinal cut points) fitted on
            every OOF row, to submit with, and their CV; None where there is no rule.
    """

    oof: np.ndarray
    fold_scores: np.ndarray
    folds: np.ndarray
    models: tuple[Level2Estimator, ...]
    multilabel: bool = False
    decision: Decision | None = None

    @property
    def cuts(self) -> np.ndarray | None:
        """Ordinal: the cut points fitted on every OOF score; else None."""
        return self.decision.values if self.decision is not None and self.decision.rule == ordinal.RULE.name else None

    @property
    def rounded_scores(self) -> np.ndarray | None:
        """With a fitted rule: each fold's metric at its plain values (0.5; rounding); else None."""
        fitted = self.decision is not None and self.decision.mode != decision.FIXED
        return self.decision.rounded_scores if fitted else None

    def predict_proba(self, X: np.ndarray, table: pd.DataFrame | None = None) -> np.ndarray:
        """The mean of the fold models' probabilities (the test-time prediction), as submitted."""
        return as_submitted(np.mean([model.predict_proba(X, table) for model in self.models], axis=0),
                            self.multilabel)


def as_submitted(proba: np.ndarray, multilabel: bool) -> np.ndarray:
    """A candidate's output as the submission will hold it: single-label rows sum to 1 (an
    ordinal score, one column, stays as it is)."""
    return proba if multilabel or proba.shape[1] == 1 else normalise_rows(proba)


def candidate_names(cfg: PipelineConfig, metric: Metric) -> list[str]:
    """The candidates to score: ``stack.candidates`` (default: every registered one that applies
    to the metric and the task), plus a forced one.

    Raises:
        StackError: a named candidate does not apply to the metric, or needs class probabilities
            where the task is ordinal or a regression (or one number per model where it is not).
    """
    requested = cfg.stack.candidates or [name for name in candidates.names() if _applies(name, cfg, metric)]
    force = None if cfg.stack.force is None else candidates.base_name(cfg.stack.force)
    if force and force not in requested:
        requested = [*requested, force]
    for name in requested:  # the config has checked that each name is registered
        if not candidates.get(name).applies(metric):
            raise StackError(f"stack: candidate {name!r} does not apply to metric {metric.name!r}")
        candidate = candidates.get(name)
        if not candidate.combines(cfg.task):
            needs = "class probabilities" if candidates.PROBABILITIES in candidate.outputs else "one number per model"
            raise StackError(f"stack: candidate {name!r} needs {needs}; task {cfg.task!r} has "
                             f"{candidates.output_of(cfg.task)} (candidates for it: {', '.join(task_candidates(cfg.task))})")
    if cfg.stack.features is None:
        return list(requested)
    # Each candidate that takes table columns is scored with and without them.
    return [variant for name in requested
            for variant in (name, *([name + WITH_FEATURES] if candidates.get(name).takes_features else []))]


def task_candidates(task: str) -> list[str]:
    """The candidates that combine a task's predictions."""
    return [name for name in candidates.names() if candidates.get(name).combines(task)]


def left_out(cfg: PipelineConfig, metric: Metric) -> list[str]:
    """The registered candidates that apply to the metric but not to the task (those that need
    class probabilities, for an ordinal task or a regression), for the leaderboard to name."""
    return [name for name in candidates.names() if candidates.get(name).outputs == {candidates.PROBABILITIES}
            and candidates.get(name).applies(metric) and not _applies(name, cfg, metric)]


def _applies(name: str, cfg: PipelineConfig, metric: Metric) -> bool:
    candidate = candidates.get(name)
    return candidate.applies(metric) and candidate.combines(cfg.task)


def rule_for(y: np.ndarray, output: np.ndarray, setting: str = decision.FIXED) -> tuple[Rule, str] | None:
    """The decision rule for these targets and outputs, and its setting: multilabel thresholds
    (``setting``: ``stack.thresholds``), an ordinal score's cut points (always fitted); None for
    a single-label task's class probabilities (arg-max)."""
    if is_multilabel(y):
        return thresholds.RULE, setting
    if is_score(y, output):
        return ordinal.RULE, ordinal.RULE.modes[0]
    return None


def cross_validate(estimator: Level2Estimator, X: np.ndarray, y: np.ndarray, fold: np.ndarray,
                   metric: Metric, n_classes: int | None = None, setting: str = decision.FIXED,
                   rule: tuple[Rule, str] | None = None, table: pd.DataFrame | None = None) -> CVResult:
    """Fit a clone of ``estimator`` without each fold and score it on that fold, at its decision
    rule's values (:func:`rule_for`) fitted without that fold.

    The rule's values for fold k are fitted on an inner OOF: every other fold j predicted by a
    clone fitted on the folds that are neither j nor k (with two folds, the other fold's rows in
    two halves), so no level-two model behind them saw fold k (:mod:`foldstack.level2.decision`).
    A rule that fits nothing (``fixed``) costs no inner fit. :attr:`CVResult.decision` holds the
    values fitted on every row.

    Args:
        estimator: an unfitted level-2 estimator.
        X: base-model OOF probabilities ``(n, n_models, C)`` (ordinal: scores ``(n, n_models, 1)``).
        y: targets (class indices, or a 0/1 matrix for multilabel).
        fold: each row's fold, as the base models used it.
        metric: scores each fold.
        n_classes: the number of grades of an ordinal task (default: those ``y`` reaches).
        setting: multilabel: ``stack.thresholds`` (``fixed``, ``global``, ``per_class``, ``auto``).
        rule: the rule and its setting, where not :func:`rule_for`'s (which ignores ``setting``).
        table: the rows' table columns, row for row with ``X``, for an estimator given
            ``features`` (None for the others): split with ``X``, so whatever the estimator
            encodes from them is fitted on the training folds alone.
    """
    multilabel = is_multilabel(y)
    oof, models = _oof(estimator, X, y, fold, table)
    rule = rule_for(y, oof, setting) if rule is None else rule
    if rule is None:
        scores = [metric(y[fold == k], oof[fold == k], n_classes=n_classes) for k in np.unique(fold)]
        return CVResult(oof, np.array(scores), np.unique(fold), models, multilabel)
    rule, setting = rule
    inner = (None if setting == decision.FIXED
             else {k: _inner_oof(estimator, X, y, fold, k, table) for k in np.unique(fold)})
    chosen = decision.choose(rule, setting, y, oof, fold, metric, n_classes, inner)
    return CVResult(oof, chosen.fold_scores, np.unique(fold), models, multilabel, chosen)


def _oof(estimator: Level2Estimator, X: np.ndarray, y: np.ndarray, fold: np.ndarray,
         table: pd.DataFrame | None = None) -> tuple[np.ndarray, tuple[Level2Estimator, ...]]:
    """Each fold's rows predicted by a clone fitted on the other folds, as submitted; the clones."""
    multilabel = is_multilabel(y)
    oof = np.zeros((len(X), X.shape[2]))
    models = []
    for k in np.unique(fold):
        held = fold == k
        models.append(clone(estimator).fit(X[~held], y[~held], _rows(table, ~held)))
        oof[held] = as_submitted(models[-1].predict_proba(X[held], _rows(table, held)), multilabel)
    return oof, tuple(models)


def _rows(table: pd.DataFrame | None, rows: np.ndarray) -> pd.DataFrame | None:
    """The table's rows ``rows`` (a boolean mask); None without a table."""
    return None if table is None else table[rows]


def _inner_oof(estimator: Level2Estimator, X: np.ndarray, y: np.ndarray, fold: np.ndarray, k,
               table: pd.DataFrame | None = None) -> np.ndarray:
    """The rows of every fold but ``k``, each predicted by a clone that saw neither its own fold
    nor fold ``k``; where only one other fold is left, its rows in two alternating halves."""
    rest = fold != k
    inner = fold[rest] if len(np.unique(fold[rest])) > 1 else np.arange(rest.sum()) % 2
    return _oof(estimator, X[rest], y[rest], inner, _rows(table, rest))[0]


def leaderboard(results: dict[str, CVResult], metric: Metric, force: str | None = None) -> pd.DataFrame:
    """One row per candidate, best CV mean first, with the chosen one marked.

    ``cv_std`` is the sample standard deviation over folds. Where a decision rule was fitted
    (ordinal cut points, multilabel thresholds but ``fixed``) the board also has ``cv_rounded``:
    the CV mean at the rule's plain values (rounding; 0.5); where the rule has a choice of modes
    (thresholds), a column named after it says which mode each candidate kept.
    """
    rows = []
    for name, result in results.items():
        folds = {f"fold_{k}": score for k, score in zip(result.folds, result.fold_scores)}
        rounded = {} if result.rounded_scores is None else {"cv_rounded": result.rounded_scores.mean()}
        chosen = result.decision
        mode = {chosen.rule: chosen.mode} if chosen is not None and len(RULES[chosen.rule].modes) > 1 else {}
        rows.append({"candidate": name, "cv_mean": result.fold_scores.mean(),
                     "cv_std": result.fold_scores.std(ddof=1), **rounded, **folds, **mode})
    board = pd.DataFrame(rows).sort_values("cv_mean", ascending=not metric.greater_is_better,
                                           kind="stable", ignore_index=True)
    chosen = force or board["candidate"].iloc[0]
    return board.assign(chosen=board["candidate"] == chosen)
