"""The `stack` stage: score every level-2 candidate by cross-validation on the base models' own
folds (:mod:`foldstack.level2.selection`), pick the best (or the forced one), fit it on every
OOF row and save it, then apply it to the base models' test predictions
(:mod:`foldstack.contracts.stack_output`).

CV runs only when what it scores changed: ``chosen.json`` keeps ``cv_key``, a digest of
folds.csv, every OOF file's bytes and the settings that shape the candidates; while it matches
(or where the OOF files are absent, as in a bundle), the stage only applies the saved model to
the current ``test/*.parquet``, so a new test set costs a prediction, not a CV.

Multilabel and ordinal: each candidate's CV is scored at its decision rule's values (the
thresholds ``stack.thresholds`` gives; the cut points), fitted nested like the candidates' CV
(:mod:`foldstack.level2.decision`), so the leaderboard ranks the candidates as they will be
submitted; the chosen candidate's values, fitted on every OOF row, are saved with it.
"""

from __future__ import annotations

import hashlib
import logging
import time

import numpy as np
import pandas as pd
from tqdm import tqdm

from foldstack.contracts import folds_file, predictions, stack_output
from foldstack.core import metrics
from foldstack.core.config import PipelineConfig
from foldstack.core.files import atomic_dir
from foldstack.core.metrics import Metric
from foldstack.core.paths import Paths
from foldstack.data import tables
from foldstack.level2 import candidates, thresholds
from foldstack.level2.base import StackError
from foldstack.level2.decision import Decision
from foldstack.level2.selection import CVResult, candidate_names, cross_validate, leaderboard, left_out
from foldstack.plots import stacking as plots
from foldstack.training.fold_task import digest

log = logging.getLogger(__name__)


def run(cfg: PipelineConfig, paths: Paths) -> pd.DataFrame:
    """Score the candidates (unless their inputs are unchanged), save the chosen one fitted on
    every OOF row, and write its test predictions.

    Writes under ``paths.stack``: ``leaderboard.csv``, ``oof.parquet``, ``test.parquet``,
    ``chosen.json``, ``level2/<candidate>.pkl``, ``leaderboard.png`` and ``confusion.png`` (a
    regression: ``predicted.png``); when only applying, ``test.parquet`` alone.

    Returns:
        The leaderboard, best first: ``candidate, cv_mean, cv_std, fold_<k>..., chosen``.

    Raises:
        DataError: the base models' files are missing or disagree (see :mod:`foldstack.contracts.predictions`).
        StackError: ``stack.candidates`` or ``stack.force`` names a candidate that does not apply.
    """
    metric = metrics.get(cfg.metric)
    names = candidate_names(cfg, metric)
    thresholds.check(cfg.stack.thresholds, metric)
    key = cv_key(cfg, paths)
    chosen = stack_output.read_chosen(paths.stack)
    if stack_output.model_saved(paths.stack) and (key is None or chosen.get("cv_key") == key):
        return apply(cfg, paths, unchanged=key is not None)
    data = predictions.load_level_two(cfg, paths)
    log.info("stacking %d models x %d classes, %d rows, %d folds", len(data.models), len(data.classes),
             len(data.ids), len(np.unique(data.fold)))
    train_table, test_table = _tables(cfg, paths, data.ids, data.test_ids)
    results = {}
    for name in tqdm(names, desc="stack candidates", disable=None):
        started = time.perf_counter()
        results[name] = cross_validate(candidates.build(name, cfg), data.oof, data.y, data.fold, metric,
                                       len(data.classes), setting=cfg.stack.thresholds,
                                       table=train_table if candidates.with_features(name) else None)
        log.info("%s: CV %.4f in %.1f s", name, results[name].fold_scores.mean(), time.perf_counter() - started)
    board = leaderboard(results, metric, force=cfg.stack.force)
    chosen = board.loc[board["chosen"], "candidate"].item()
    # CV scored the recipe; the model that goes on is the same recipe fitted on every OOF row, with
    # its decision rule's values fitted on the chosen candidate's every OOF row.
    choice = results[chosen].decision
    rule = {} if choice is None else {"rule": choice.rule, "mode": choice.mode, "values": tuple(choice.values.tolist())}
    table = train_table if candidates.with_features(chosen) else None
    fitted = stack_output.FittedStack(chosen, data.models, data.classes,
                                      candidates.build(chosen, cfg).fit(data.oof, data.y, table), **rule)
    test = fitted.predict_proba(data.test, test_table if fitted.takes_table else None)
    _write(paths, data, board, results[chosen], fitted, test, metric, forced=cfg.stack.force is not None, key=key)
    _show(board, chosen, metric, choice, left_out(cfg, metric) if cfg.stack.candidates is None else [], cfg.task)
    return board


def _tables(cfg: PipelineConfig, paths: Paths, ids: np.ndarray,
            test_ids: np.ndarray) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """``stack.features``'s columns for the OOF rows and the test rows, row for row; Nones without it."""
    if cfg.stack.features is None:
        return None, None
    return tables.feature_table(cfg, paths, "train", ids), tables.feature_table(cfg, paths, "test", test_ids)


def cv_key(cfg: PipelineConfig, paths: Paths) -> str | None:
    """What the CV depends on: folds.csv and its class order, every OOF file's bytes (and the
    train table's, with ``stack.features``), the task, metric, seed and stack settings; None
    where an OOF file or folds.csv is absent (a bundle: apply only)."""
    files = [paths.folds, folds_file.classes_path(paths.folds), *(paths.oof / f"{model.name}.parquet" for model in cfg.models)]
    if cfg.stack.features is not None and all(path.is_file() for path in files):
        files.append(paths.data / cfg.data.train_csv)
    if not all(path.is_file() for path in files):
        return None
    return digest({"files": [hashlib.sha256(path.read_bytes()).hexdigest() for path in files],
                   "models": [model.name for model in cfg.models], "task": cfg.task, "metric": cfg.metric,
                   "seed": cfg.seed, "stack": cfg.stack.model_dump(mode="json")})


def apply(cfg: PipelineConfig, paths: Paths, unchanged: bool = True) -> pd.DataFrame:
    """Apply the saved level-two model to the current ``test/*.parquet``; no CV, no OOF file.

    Raises:
        DataError: no saved model, a model list other than the pipeline's, or bad test files.
    """
    models = tuple(model.name for model in cfg.models)
    fitted = stack_output.read_model(paths.stack, models)
    test_ids, test = predictions.load_test(paths, models, fitted.classes)
    if fitted.takes_table and cfg.stack.features is None:
        raise StackError(f"{paths.stack / stack_output.CHOSEN}: {fitted.name} was fitted with table columns but the "
                         f"pipeline has no stack.features; run the stack stage again with the OOF files")
    table = tables.feature_table(cfg, paths, "test", test_ids) if fitted.takes_table else None
    stack_output.write_test(paths.stack, test_ids, fitted.classes, fitted.predict_proba(test, table))
    why = "OOF files unchanged since the last CV" if unchanged else "no OOF files"
    print(f"stack: {why}; applied the saved {fitted.name} to {len(test_ids)} test rows -> "
          f"{paths.stack / stack_output.TEST}")
    return pd.read_csv(paths.stack / stack_output.LEADERBOARD)


def _write(paths: Paths, data: predictions.LevelTwoData, board: pd.DataFrame, result: CVResult,
           fitted: stack_output.FittedStack, test: np.ndarray, metric: Metric, forced: bool, key: str | None) -> None:
    """Write the stack folder as a whole: an interrupted stage leaves the previous folder intact."""
    row = board.set_index("candidate").loc[fitted.name]
    chosen = {
        "metric": metric.name, "greater_is_better": metric.greater_is_better,
        "cv_mean": float(row["cv_mean"]), "cv_std": float(row["cv_std"]), "forced": forced,
        "fold_scores": {str(k): float(s) for k, s in zip(result.folds, result.fold_scores)}, "cv_key": key,
    }
    with atomic_dir(paths.stack) as folder:
        stack_output.write(folder, board, chosen, fitted, data.ids, data.fold, result.oof,
                           data.test_ids, test)
        plots.leaderboard(board, metric, folder / "leaderboard.png")
        oof = result.oof
        if data.classes.regression:
            plots.predicted_against_true(data.y, oof[:, 0], f"OOF predictions: {fitted.name}", folder / stack_output.PREDICTED)
            return
        if data.classes.ordinal:  # the grades its cut points give, as 0/1 rows
            oof = metrics.one_hot(fitted.hard(oof), len(data.classes))
        plots.confusion(data.y, oof, data.classes.names, f"OOF confusion: {fitted.name}",
                        folder / "confusion.png", fitted.thresholds)


def _show(board: pd.DataFrame, chosen: str, metric: Metric, choice: Decision | None, left: list[str],
          task: str) -> None:
    direction = "higher" if metric.greater_is_better else "lower"
    n_folds = sum(column.startswith("fold_") for column in board.columns)
    print(f"Stacking leaderboard: {metric.name}, {direction} is better, {n_folds} folds")
    print(board.drop(columns="chosen").to_string(index=False, float_format="{:.4f}".format))
    row = board.set_index("candidate").loc[chosen]
    forced = "" if chosen == board["candidate"].iloc[0] else " (forced)"
    print(f"chosen: {chosen}{forced}, CV {row['cv_mean']:.4f} +/- {row['cv_std']:.4f}")
    if choice is not None and choice.rule == thresholds.RULE.name:
        tried = "".join(f", {mode} CV {cv:.4f}" for mode, cv in choice.cv.items())
        values = np.unique(choice.values)
        shown = f"{values[0]:.2f}" if len(values) == 1 else f"{values.min():.2f}..{values.max():.2f}"
        print(f"thresholds: {choice.mode} ({shown}{tried})")
    if "cv_rounded" in board.columns:
        print(f"cv_mean: each fold at {choice.rule} fitted without it; cv_rounded: rounded instead (at 0.5)")
    if left:
        print(f"not scored for task {task!r} (they need class probabilities): {', '.join(left)}")
