"""The stack stage: score every level-2 candidate by cross-validation on the base models' own
folds, pick the best (or the forced one), and write its OOF and test predictions.

CV is nested so that no label leaks into level two: for fold k a fresh candidate is fitted on
the OOF rows of the other folds and predicts fold k. Test predictions average the K fitted
candidates rather than refitting one on all rows: the test predictions then come from exactly
the models whose CV is reported (a refit would be a model nobody scored, with LightGBM's number
of rounds tuned for less data), and averaging K models reduces their variance for free.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import clone
from tqdm import tqdm

from foldstack import io, metrics, stacking
from foldstack.config import PipelineConfig
from foldstack.errors import FoldstackError
from foldstack.metrics import Metric
from foldstack.paths import Paths
from foldstack.stacking import inputs, plots
from foldstack.stacking.base import Level2Estimator

log = logging.getLogger(__name__)


class StackError(FoldstackError):
    """The stacking settings cannot be honoured for this pipeline."""


@dataclass(frozen=True)
class CVResult:
    """One candidate's cross-validation.

    Attributes:
        oof: its out-of-fold probabilities ``(n, C)``.
        fold_scores: the metric on each fold, in the order of ``folds``.
        folds: the fold values.
        models: the candidate fitted without each fold, in the same order.
    """

    oof: np.ndarray
    fold_scores: np.ndarray
    folds: np.ndarray
    models: tuple[Level2Estimator, ...]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """The mean of the fold models' probabilities (the test-time prediction)."""
        return np.mean([model.predict_proba(X) for model in self.models], axis=0)


def run(cfg: PipelineConfig, paths: Paths) -> pd.DataFrame:
    """Score the candidates, write the leaderboard and the chosen candidate's predictions.

    Writes under ``paths.stack``: ``leaderboard.csv``, ``oof.parquet``, ``test.parquet``,
    ``chosen.json``, ``leaderboard.png`` and ``confusion.png``.

    Returns:
        The leaderboard, best first: ``candidate, cv_mean, cv_std, fold_<k>..., chosen``.

    Raises:
        DataError: the base models' files are missing or disagree (see :func:`inputs.load`).
        StackError: ``stack.candidates`` or ``stack.force`` names a candidate that does not apply.
    """
    metric = metrics.get(cfg.metric)
    names = candidate_names(cfg, metric)
    data = inputs.load(cfg, paths)
    log.info("stacking %d models x %d classes, %d rows, %d folds", len(data.models), len(data.classes),
             len(data.ids), len(np.unique(data.fold)))
    results = {}
    for name in tqdm(names, desc="stack candidates", disable=None):
        started = time.perf_counter()
        results[name] = cross_validate(stacking.get(name).build(cfg), data.oof, data.y, data.fold, metric)
        log.info("%s: CV %.4f in %.1f s", name, results[name].fold_scores.mean(), time.perf_counter() - started)
    board = leaderboard(results, metric, force=cfg.stack.force)
    chosen = board.loc[board["chosen"], "candidate"].item()
    _write(paths, data, board, results[chosen], chosen, metric, forced=cfg.stack.force is not None)
    _show(board, chosen, metric)
    return board


def candidate_names(cfg: PipelineConfig, metric: Metric) -> list[str]:
    """The candidates to score: ``stack.candidates`` (default: every registered one that applies
    to the metric), plus a forced one."""
    requested = cfg.stack.candidates or [name for name in stacking.names() if stacking.get(name).applies(metric)]
    if cfg.stack.force and cfg.stack.force not in requested:
        requested = [*requested, cfg.stack.force]
    for name in requested:  # the config has checked that each name is registered
        if not stacking.get(name).applies(metric):
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
    folds = np.unique(fold)
    oof = np.zeros((len(X), X.shape[2]))
    scores, models = [], []
    for k in folds:
        held = fold == k
        model = clone(estimator).fit(X[~held], y[~held])
        oof[held] = model.predict_proba(X[held])
        scores.append(metric(y[held], oof[held]))
        models.append(model)
    return CVResult(oof, np.array(scores), folds, tuple(models))


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


def _write(paths: Paths, data: inputs.LevelTwoData, board: pd.DataFrame, result: CVResult, name: str,
           metric: Metric, forced: bool) -> None:
    """Write the stack folder as a whole: an interrupted stage leaves the previous folder intact,
    never a new leaderboard beside an old ``chosen.json`` that ``submit`` would trust."""
    with io.atomic_dir(paths.stack) as folder:
        _write_files(folder, data, board, result, name, metric, forced)


def _write_files(folder: Path, data: inputs.LevelTwoData, board: pd.DataFrame, result: CVResult, name: str,
                 metric: Metric, forced: bool) -> None:
    classes = list(data.classes)
    row = board.set_index("candidate").loc[name]
    io.write_csv(folder / "leaderboard.csv", board)
    oof = pd.DataFrame(result.oof, columns=classes)
    io.write_parquet(folder / "oof.parquet", pd.concat(
        [pd.DataFrame({"id": data.ids, "fold": data.fold}), oof], axis=1))
    test = pd.DataFrame(result.predict_proba(data.test), columns=classes)
    io.write_parquet(folder / "test.parquet", pd.concat([pd.DataFrame({"id": data.test_ids}), test], axis=1))
    io.write_json(folder / "chosen.json", {
        "name": name, "metric": metric.name, "greater_is_better": metric.greater_is_better,
        "cv_mean": float(row["cv_mean"]), "cv_std": float(row["cv_std"]), "forced": forced,
        "fold_scores": {str(k): float(s) for k, s in zip(result.folds, result.fold_scores)},
        "models": list(data.models),
    })
    plots.leaderboard(board, metric, folder / "leaderboard.png")
    plots.confusion(data.y, result.oof, data.classes, f"OOF confusion: {name}", folder / "confusion.png")


def _show(board: pd.DataFrame, chosen: str, metric: Metric) -> None:
    direction = "higher" if metric.greater_is_better else "lower"
    n_folds = sum(column.startswith("fold_") for column in board.columns)
    print(f"Stacking leaderboard: {metric.name}, {direction} is better, {n_folds} folds")
    print(board.drop(columns="chosen").to_string(index=False, float_format="{:.4f}".format))
    row = board.set_index("candidate").loc[chosen]
    forced = "" if chosen == board["candidate"].iloc[0] else " (forced)"
    print(f"chosen: {chosen}{forced}, CV {row['cv_mean']:.4f} +/- {row['cv_std']:.4f}")
