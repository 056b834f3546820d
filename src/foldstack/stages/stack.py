"""The `stack` stage: score every level-2 candidate by cross-validation on the base models' own
folds (:mod:`foldstack.level2.selection`), pick the best (or the forced one), and write its OOF
and test predictions with the leaderboard (:mod:`foldstack.contracts.stack_output`)."""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
from tqdm import tqdm

from foldstack.contracts import predictions, stack_output
from foldstack.core import metrics
from foldstack.core.config import PipelineConfig
from foldstack.core.files import atomic_dir
from foldstack.core.metrics import Metric
from foldstack.core.paths import Paths
from foldstack.level2 import candidates
from foldstack.level2.selection import CVResult, candidate_names, cross_validate, leaderboard
from foldstack.plots import stacking as plots

log = logging.getLogger(__name__)


def run(cfg: PipelineConfig, paths: Paths) -> pd.DataFrame:
    """Score the candidates, write the leaderboard and the chosen candidate's predictions.

    Writes under ``paths.stack``: ``leaderboard.csv``, ``oof.parquet``, ``test.parquet``,
    ``chosen.json``, ``leaderboard.png`` and ``confusion.png``.

    Returns:
        The leaderboard, best first: ``candidate, cv_mean, cv_std, fold_<k>..., chosen``.

    Raises:
        DataError: the base models' files are missing or disagree (see :mod:`foldstack.contracts.predictions`).
        StackError: ``stack.candidates`` or ``stack.force`` names a candidate that does not apply.
    """
    metric = metrics.get(cfg.metric)
    names = candidate_names(cfg, metric)
    data = predictions.load_level_two(cfg, paths)
    log.info("stacking %d models x %d classes, %d rows, %d folds", len(data.models), len(data.classes),
             len(data.ids), len(np.unique(data.fold)))
    results = {}
    for name in tqdm(names, desc="stack candidates", disable=None):
        started = time.perf_counter()
        results[name] = cross_validate(candidates.get(name).build(cfg), data.oof, data.y, data.fold, metric)
        log.info("%s: CV %.4f in %.1f s", name, results[name].fold_scores.mean(), time.perf_counter() - started)
    board = leaderboard(results, metric, force=cfg.stack.force)
    chosen = board.loc[board["chosen"], "candidate"].item()
    _write(paths, data, board, results[chosen], chosen, metric, forced=cfg.stack.force is not None)
    _show(board, chosen, metric)
    return board


def _write(paths: Paths, data: predictions.LevelTwoData, board: pd.DataFrame, result: CVResult, name: str,
           metric: Metric, forced: bool) -> None:
    """Write the stack folder as a whole: an interrupted stage leaves the previous folder intact."""
    row = board.set_index("candidate").loc[name]
    chosen = {
        "name": name, "metric": metric.name, "greater_is_better": metric.greater_is_better,
        "cv_mean": float(row["cv_mean"]), "cv_std": float(row["cv_std"]), "forced": forced,
        "fold_scores": {str(k): float(s) for k, s in zip(result.folds, result.fold_scores)},
        "models": list(data.models),
    }
    with atomic_dir(paths.stack) as folder:
        stack_output.write(folder, board, chosen, data.classes, data.ids, data.fold, result.oof,
                           data.test_ids, result.predict_proba(data.test))
        plots.leaderboard(board, metric, folder / "leaderboard.png")
        plots.confusion(data.y, result.oof, data.classes.names, f"OOF confusion: {name}", folder / "confusion.png")


def _show(board: pd.DataFrame, chosen: str, metric: Metric) -> None:
    direction = "higher" if metric.greater_is_better else "lower"
    n_folds = sum(column.startswith("fold_") for column in board.columns)
    print(f"Stacking leaderboard: {metric.name}, {direction} is better, {n_folds} folds")
    print(board.drop(columns="chosen").to_string(index=False, float_format="{:.4f}".format))
    row = board.set_index("candidate").loc[chosen]
    forced = "" if chosen == board["candidate"].iloc[0] else " (forced)"
    print(f"chosen: {chosen}{forced}, CV {row['cv_mean']:.4f} +/- {row['cv_std']:.4f}")
