"""Reading what the training stage hands to level two: folds.csv and each model's OOF and test
predictions, checked and aligned by id and class name (never by row or column order)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from foldstack.errors import DataError

if TYPE_CHECKING:
    from foldstack.config import PipelineConfig
    from foldstack.paths import Paths


@dataclass(frozen=True)
class LevelTwoData:
    """The base models' predictions as level-2 arrays.

    Attributes:
        models: model names, the order of the model axis.
        classes: class names (sorted as strings), the order of the class axis.
        ids: training ids in folds.csv order.
        fold: each training id's fold.
        y: class indices ``(n,)``, or for multilabel a 0/1 matrix ``(n, C)``.
        oof: OOF probabilities ``(n, n_models, C)``.
        test_ids: test ids in the first model's order.
        test: test probabilities ``(n_test, n_models, C)``.
    """

    models: tuple[str, ...]
    classes: tuple[str, ...]
    ids: np.ndarray
    fold: np.ndarray
    y: np.ndarray
    oof: np.ndarray
    test_ids: np.ndarray
    test: np.ndarray


def load(cfg: PipelineConfig, paths: Paths) -> LevelTwoData:
    """Read folds.csv and every configured model's OOF and test predictions.

    Raises:
        DataError: a file is missing, lacks a class column, disagrees with folds.csv on ids or
            folds, or holds a value that is not a probability; the message names file and id.
    """
    multilabel = cfg.task == "multilabel"
    folds = read_folds(paths.folds)
    classes = class_names(folds["label"], multilabel)
    models = tuple(model.name for model in cfg.models)
    oof = [_read_oof(paths.oof / f"{model}.parquet", classes, folds, paths.folds) for model in models]
    # Test ids have no folds.csv to agree with: every model must agree with the first one.
    first = paths.test / f"{models[0]}.parquet"
    test_ids = read_predictions(first, classes).index
    test = [read_predictions(paths.test / f"{model}.parquet", classes, expected=test_ids, reference=first)
            for model in models]
    return LevelTwoData(
        models=models,
        classes=classes,
        ids=folds.index.to_numpy(),
        fold=folds["fold"].to_numpy(),
        y=encode_labels(folds["label"], classes, multilabel, paths.folds),
        oof=np.stack([frame[list(classes)].to_numpy(np.float64) for frame in oof], axis=1),
        test_ids=test_ids.to_numpy(),
        test=np.stack([frame[list(classes)].to_numpy(np.float64) for frame in test], axis=1),
    )


def read_folds(path: Path) -> pd.DataFrame:
    """folds.csv indexed by id (as strings), with columns ``label`` and ``fold``."""
    if not path.is_file():
        raise DataError(f"{path}: not found; run the folds stage first")
    frame = pd.read_csv(path, dtype={"id": str, "label": str}, keep_default_na=False)
    missing = [c for c in ("id", "label", "fold") if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected id, label, fold")
    return _index_by_id(frame, path)


def class_names(labels: pd.Series, multilabel: bool) -> tuple[str, ...]:
    """The class set as the training stage names its columns: sorted unique labels as strings
    (for multilabel, the space-separated labels split apart)."""
    if multilabel:
        return tuple(sorted({token for label in labels for token in label.split()}))
    return tuple(sorted(set(labels.astype(str))))


def encode_labels(labels: pd.Series, classes: tuple[str, ...], multilabel: bool, source: Path) -> np.ndarray:
    """Labels (indexed by id) as class indices, or for multilabel as a 0/1 matrix.

    Raises:
        DataError: a label is not in ``classes``; names ``source`` and the id.
    """
    if multilabel:
        from sklearn.preprocessing import MultiLabelBinarizer

        tokens = labels.str.split()
        unknown = tokens.map(lambda row: next((t for t in row if t not in classes), None)).dropna()
        codes = None if len(unknown) else MultiLabelBinarizer(classes=classes).fit_transform(tokens)
    else:
        codes = pd.Categorical(labels, categories=classes).codes
        unknown = labels[codes < 0]
    if len(unknown):
        raise DataError(f"{source}: id {unknown.index[0]!r} has label {unknown.iloc[0]!r}, "
                        f"which is not a class; classes: {shorten(classes)}")
    return np.asarray(codes)


def read_predictions(path: Path, classes: tuple[str, ...], *, extra: tuple[str, ...] = (),
                     expected: pd.Index | None = None, reference: Path | None = None) -> pd.DataFrame:
    """A predictions parquet indexed by id (strings), checked and reindexed to ``expected``.

    Args:
        path: the parquet file: ``id``, the ``extra`` columns, then one column per class.
        classes: the class columns it must hold, no more, no less.
        expected: the ids it must hold exactly; the result follows their order.
        reference: the file ``expected`` came from, for messages.
    """
    if not path.is_file():
        raise DataError(f"{path}: not found; run the train stage first")
    frame = pd.read_parquet(path)
    frame.columns = [str(column) for column in frame.columns]
    wanted = ["id", *extra, *classes]
    missing = [column for column in wanted if column not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {shorten(missing)}; classes: {shorten(classes)}")
    unexpected = [column for column in frame.columns if column not in wanted]
    if unexpected:
        raise DataError(f"{path}: column(s) {shorten(unexpected)} are not classes of folds.csv; "
                        f"classes: {shorten(classes)}")
    frame = _index_by_id(frame.assign(id=frame["id"].astype(str)), path)
    if expected is not None:
        check_same_ids(path, frame.index, expected, reference)
        frame = frame.reindex(expected)
    _check_probabilities(path, frame[list(classes)])
    return frame


def _read_oof(path: Path, classes: tuple[str, ...], folds: pd.DataFrame, reference: Path) -> pd.DataFrame:
    frame = read_predictions(path, classes, extra=("fold",), expected=folds.index, reference=reference)
    # A row scored by a model that trained on it would leak its label into level two.
    differ = frame["fold"].to_numpy() != folds["fold"].to_numpy()
    if differ.any():
        row = int(np.argmax(differ))
        raise DataError(f"{path}: id {frame.index[row]!r} is in fold {frame['fold'].iloc[row]} but "
                        f"{reference} puts it in fold {folds['fold'].iloc[row]}")
    return frame


def _index_by_id(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    repeated = frame["id"][frame["id"].duplicated()]
    if len(repeated):
        raise DataError(f"{path}: id {repeated.iloc[0]!r} appears more than once")
    return frame.set_index("id")


def check_same_ids(path: Path, got: pd.Index, expected: pd.Index, reference: Path | None) -> None:
    """Raise a DataError naming ``path`` and an example id unless ``got`` and ``expected`` hold
    the same ids (in any order)."""
    missing = expected.difference(got, sort=False)
    if len(missing):
        raise DataError(f"{path}: {len(missing)} id(s) of {reference} missing, e.g. {missing[0]!r}")
    extra = got.difference(expected, sort=False)
    if len(extra):
        raise DataError(f"{path}: {len(extra)} id(s) not in {reference}, e.g. {extra[0]!r}")


def _check_probabilities(path: Path, values: pd.DataFrame) -> None:
    bad = first_non_probability(values)
    if bad is not None:
        row, column, value = bad
        raise DataError(f"{path}: id {values.index[row]!r}, class {column!r}: {value} is not a "
                        f"probability in [0, 1]")


def first_non_probability(values: pd.DataFrame) -> tuple[int, str, float] | None:
    """Row position, column and value of the first cell outside [0, 1] (or NaN), if any."""
    array = values.to_numpy(np.float64)
    bad = ~((array >= 0) & (array <= 1))  # NaN fails both comparisons
    if not bad.any():
        return None
    row, column = np.argwhere(bad)[0]
    return int(row), str(values.columns[column]), float(array[row, column])


def shorten(items, limit: int = 10) -> str:
    """At most ``limit`` items joined by commas, then how many more there are."""
    items = list(items)
    more = f" ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(map(str, items[:limit])) + more
