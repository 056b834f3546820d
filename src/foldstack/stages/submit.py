"""The submit stage: turn the chosen stacker's test predictions into the competition's format,
validate the file against the sample submission before writing it, and keep an index of every
submission written with its CV (and local leaderboard score when a solution file exists).

Uploading is not done here: :func:`run` takes an ``upload`` callable, so the Kaggle client stays
in its own module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from foldstack.contracts import folds_file, stack_output, submission_index
from foldstack.contracts.predictions import check_same_ids, first_non_probability
from foldstack.core import metrics
from foldstack.core.config import PipelineConfig
from foldstack.core.errors import DataError, FoldstackError, shorten
from foldstack.core.files import write_csv
from foldstack.core.paths import Paths
from foldstack.data import tables
from foldstack.data.labels import Classes, every_label

log = logging.getLogger(__name__)

#: Tolerance of the rule that a multiclass row of probabilities sums to 1.
SUM_TOLERANCE = 1e-6


class SubmissionError(FoldstackError):
    """A submission that breaks a rule of the sample submission; names the rule and the row."""


@dataclass(frozen=True)
class Format:
    """A submission layout.

    Attributes:
        build: ``build(proba, columns, thresholds) -> values``: from test probabilities (rows in
            the sample's order, one column per class) to the sample's value ``columns``;
            ``thresholds`` (multilabel; None: 0.5) holds each class's threshold in ``proba``'s
            column order.
        checks: each ``check(values, ids, classes, task)`` raises a SubmissionError.
    """

    build: Callable[[pd.DataFrame, list[str], np.ndarray | None], pd.DataFrame]
    checks: tuple[Callable[[pd.DataFrame, pd.Series, tuple[str, ...], str], None], ...]


def run(cfg: PipelineConfig, paths: Paths, upload: Callable[[Path], float | None] | None = None) -> Path:
    """Write the submission of the stack stage's chosen candidate and return its path.

    The file is ``submissions/<pipeline>/<pipeline>-<candidate>-cv<score>.csv``; it is validated
    against the sample submission first, and ``index.csv`` beside it gains (or updates) its row.
    Prints the CV score and, where ``data.solution`` exists, the local leaderboard score.

    Args:
        cfg: the pipeline.
        paths: its folders.
        upload: called with the written file's path, when given (e.g. a Kaggle upload); the
            public score it returns, if any, joins the file's row in ``index.csv``.

    Raises:
        DataError: the stack output, sample submission or solution is missing or disagrees on ids.
        SubmissionError: the submission would break a rule of the sample submission.
    """
    chosen = stack_output.read(paths.stack)
    sample_path = paths.data / cfg.data.sample_submission
    sample = read_sample(sample_path, cfg.data.id_column)
    ids = pd.Index(sample[cfg.data.id_column])
    check_same_ids(paths.stack / "test.parquet", chosen.proba.index, ids, sample_path)
    # Exactly what the stack stage scored by CV (its rows already sum to 1 where they must).
    proba = chosen.proba.reindex(ids)
    if cfg.task == "regression" and cfg.target.range is not None:  # what is submitted is scored
        proba = proba.clip(*cfg.target.range)
    submission = build(proba, sample, cfg.data.id_column, cfg.submission.format, chosen.thresholds)
    classes = tuple(chosen.proba.columns)
    validate(submission, sample, id_column=cfg.data.id_column, classes=classes,
             fmt=cfg.submission.format, task=cfg.task)
    path = paths.submissions / f"{cfg.name}-{chosen.name}-cv{chosen.cv_mean:.4f}.csv"
    write_csv(path, submission)
    local = _local_score(cfg, paths, proba, chosen.thresholds)
    entry = {
        "file": path.name, "candidate": chosen.name, "metric": chosen.metric, "cv_mean": chosen.cv_mean,
        "cv_std": chosen.cv_std, "local_lb": local,
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    index = paths.submissions / submission_index.NAME
    submission_index.update(index, entry)
    print(f"wrote {path}")
    print(f"CV {chosen.metric} {chosen.cv_mean:.4f} +/- {chosen.cv_std:.4f} ({chosen.name})")
    if local is not None:
        print(f"local LB {chosen.metric} {local:.4f}")
    if upload is not None:
        public = upload(path)
        if public is not None:  # the report's CV-against-leaderboard plot reads it
            submission_index.update(index, {**entry, "public_lb": public})
    return path


def read_sample(path: Path, id_column: str) -> pd.DataFrame:
    """The sample submission, every cell as written (strings; a BOM or latin-1 is read too)."""
    if not path.is_file():
        raise DataError(f"{path}: sample submission not found; run the download stage first")
    sample = tables.read_csv(path, "sample submission")
    if id_column not in sample.columns:
        raise DataError(f"{path}: no id column {id_column!r}; columns: {shorten(sample.columns)}")
    return sample


def build(proba: pd.DataFrame, sample: pd.DataFrame, id_column: str, fmt: str,
          thresholds: pd.Series | None = None) -> pd.DataFrame:
    """The submission: the sample's ids, then its value columns filled in the format ``fmt``.

    Args:
        proba: test probabilities, rows in the sample's order, one column per class.
        thresholds: multilabel: each class's threshold, indexed by class; None: 0.5.
    """
    columns = [column for column in sample.columns if column != id_column]
    aligned = None if thresholds is None else thresholds.loc[proba.columns].to_numpy(np.float64)
    values = FORMATS[fmt].build(proba, columns, aligned)
    return pd.concat([sample[[id_column]].reset_index(drop=True), values.reset_index(drop=True)], axis=1)


def validate(submission: pd.DataFrame, sample: pd.DataFrame, *, id_column: str, classes: tuple[str, ...],
             fmt: str, task: str) -> None:
    """Check ``submission`` against the sample submission before it is written.

    Rules: the same columns; every id exactly once, in the same order; then per format:
    probabilities in [0, 1] and (multiclass) rows summing to 1 within :data:`SUM_TOLERANCE`, or
    labels drawn from ``classes``. Rows are counted from 1 after the header.

    Raises:
        SubmissionError: ``"<rule>: <where>"`` for the first row that breaks the first rule.
    """
    if list(submission.columns) != list(sample.columns):
        raise SubmissionError(f"same columns as the sample submission: got {shorten(submission.columns)}, "
                              f"expected {shorten(sample.columns)}")
    ids = submission[id_column].astype(str).reset_index(drop=True)
    _check_ids(ids, sample[id_column].reset_index(drop=True))
    values = submission.drop(columns=id_column).reset_index(drop=True)
    for check in FORMATS[fmt].checks:
        check(values, ids, classes, task)


# --- formats ------------------------------------------------------------------------------------


def _one_column(columns: list[str], fmt: str) -> str:
    if len(columns) != 1:
        raise SubmissionError(f"format {fmt!r} needs one column beside the id; the sample submission "
                              f"has {len(columns)}: {shorten(columns)}")
    return columns[0]


def _labels(proba: pd.DataFrame, columns: list[str], thresholds: np.ndarray | None) -> pd.DataFrame:
    column = _one_column(columns, "label")
    return pd.DataFrame({column: proba.columns[proba.to_numpy().argmax(axis=1)]})


def _multilabels(proba: pd.DataFrame, columns: list[str], thresholds: np.ndarray | None) -> pd.DataFrame:
    column = _one_column(columns, "multilabel")
    chosen = metrics.hard_predictions(proba.to_numpy(), multilabel=True, thresholds=thresholds).astype(bool)
    return pd.DataFrame({column: [" ".join(proba.columns[row]) for row in chosen]})


def _probabilities(proba: pd.DataFrame, columns: list[str], thresholds: np.ndarray | None) -> pd.DataFrame:
    if sorted(columns) != sorted(proba.columns):
        raise SubmissionError(f"format 'probabilities' needs one column per class ({shorten(proba.columns)}); "
                              f"the sample submission has {shorten(columns)}")
    return proba[columns]


def _value(proba: pd.DataFrame, columns: list[str], thresholds: np.ndarray | None) -> pd.DataFrame:
    column = _one_column(columns, "value")
    return pd.DataFrame({column: proba.iloc[:, 0].to_numpy(np.float64)})


def _binary(proba: pd.DataFrame, columns: list[str], thresholds: np.ndarray | None) -> pd.DataFrame:
    column = _one_column(columns, "binary")
    if proba.shape[1] != 2:
        raise SubmissionError(f"format 'binary' needs two classes; there are {proba.shape[1]}")
    # The column names the positive class where it is one (e.g. 'dog'), else it is the second
    # class in sorted order (e.g. '1' of '0', '1').
    positive = column if column in proba.columns else proba.columns[1]
    return pd.DataFrame({column: proba[positive].to_numpy()})


# --- rules --------------------------------------------------------------------------------------


def _where(row: int, ids: pd.Series) -> str:
    return f"row {row + 1} (id {ids.iloc[row]!r})"


def _check_ids(ids: pd.Series, expected: pd.Series) -> None:
    counts = ids.value_counts(sort=False)
    if (counts > 1).any():
        repeated = counts.index[counts > 1][0]
        raise SubmissionError(f"every id exactly once: id {repeated!r} appears {counts[repeated]} times")
    missing = expected[~expected.isin(ids)]
    if len(missing):
        raise SubmissionError(f"every id exactly once: id {missing.iloc[0]!r} of the sample submission is missing")
    extra = ids[~ids.isin(expected)]
    if len(extra):
        raise SubmissionError(f"every id exactly once: id {extra.iloc[0]!r} is not in the sample submission")
    moved = np.flatnonzero(ids.to_numpy() != expected.to_numpy())
    if len(moved):
        raise SubmissionError(f"same order as the sample submission: {_where(moved[0], ids)} where the "
                              f"sample submission has id {expected.iloc[moved[0]]!r}")


def _in_unit_interval(values: pd.DataFrame, ids: pd.Series, classes: tuple[str, ...], task: str) -> None:
    bad = first_non_probability(values)
    if bad is not None:
        row, column, value = bad
        raise SubmissionError(f"probabilities in [0, 1]: {_where(row, ids)} has {column} = {value}")


def _finite(values: pd.DataFrame, ids: pd.Series, classes: tuple[str, ...], task: str) -> None:
    numbers = pd.to_numeric(values.iloc[:, 0], errors="coerce").to_numpy(np.float64)
    bad = np.flatnonzero(~np.isfinite(numbers))
    if len(bad):
        raise SubmissionError(f"numbers: {_where(bad[0], ids)} has {values.iloc[bad[0], 0]!r}")


def _rows_sum_to_one(values: pd.DataFrame, ids: pd.Series, classes: tuple[str, ...], task: str) -> None:
    if task == "multilabel":  # each class is its own yes/no question
        return
    sums = values.to_numpy(np.float64).sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1.0) > SUM_TOLERANCE)
    if len(off):
        raise SubmissionError(f"rows sum to 1: {_where(off[0], ids)} sums to {sums[off[0]]:.9g}")


def _from_class_set(values: pd.DataFrame, ids: pd.Series, classes: tuple[str, ...], task: str) -> None:
    # A multilabel cell holds several space-separated labels (or none); a label cell one.
    cells = values.iloc[:, 0].astype(str)
    tokens = cells.str.split() if task == "multilabel" else cells.map(lambda cell: [cell])
    for row, labels in enumerate(tokens):
        unknown = [label for label in labels if label not in classes]
        if unknown:
            raise SubmissionError(f"labels from the class set: {_where(row, ids)} has {unknown[0]!r}; "
                                  f"classes: {shorten(classes)}")


FORMATS: dict[str, Format] = {
    "label": Format(_labels, (_from_class_set,)),
    "multilabel": Format(_multilabels, (_from_class_set,)),
    "probabilities": Format(_probabilities, (_in_unit_interval, _rows_sum_to_one)),
    "binary": Format(_binary, (_in_unit_interval,)),
    "value": Format(_value, (_finite,)),
}


def _local_score(cfg: PipelineConfig, paths: Paths, proba: pd.DataFrame,
                 thresholds: pd.Series | None = None) -> float | None:
    """The pipeline's metric of ``proba`` (multilabel: at ``thresholds``) against the solution
    file, if there is one."""
    if cfg.data.solution is None:
        return None
    path = paths.data / cfg.data.solution
    if not path.is_file():
        log.warning("%s: solution file not found; no local leaderboard score", path)
        return None
    labels = tables.read_solution_labels(cfg, path)
    check_same_ids(path, labels.index, proba.index, paths.data / cfg.data.sample_submission)
    # The class order the folds wrote (a binary task's positive class second), never derived again
    # from the solution: that would need the positive class said again, and could order it otherwise.
    trained = folds_file.read_classes(paths.folds, cfg)
    if trained.regression:
        return metrics.get(cfg.metric)(trained.encode(labels.reindex(proba.index), path), proba.to_numpy())
    unseen = sorted(set(every_label(labels, trained.multilabel)) - set(trained.names))
    if unseen:
        # No model can predict a class it never saw: score those rows as missed (probability 0)
        # rather than refuse to score at all.
        log.warning("%s: label(s) %s never appear in training; their rows count as wrong in the local "
                    "score", path, shorten(unseen))
    proba = proba.reindex(columns=[*trained.names, *unseen], fill_value=0.0)
    classes = Classes(tuple(proba.columns), multilabel=trained.multilabel)
    y_true = classes.encode(labels.reindex(proba.index), path)
    # A class never seen in training is never predicted, whatever its threshold.
    aligned = None if thresholds is None else thresholds.reindex(proba.columns, fill_value=1.0).to_numpy(np.float64)
    return metrics.get(cfg.metric)(y_true, proba.to_numpy(), aligned)
