"""Prediction files: ``oof/<model>.parquet`` (``id, fold``, then one probability column per
class; for an ordinal task the one column ``score`` instead, see
:attr:`~foldstack.data.labels.Classes.columns`) and ``test/<model>.parquet`` (``id``, then the same class columns) with its key
``test/<model>.key`` (what made it) and ``test/<model>.pace.json`` (seconds per test image the
predicting took: decoding and every fold and view), and the per-fold files of the same shapes under
``models/<model>/fold<k>/``.

The train stage writes the OOF files, the predict stage the test files, the stack stage reads
both; readers check them and align them by id and class name, never by row or column order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from foldstack.contracts import folds_file
from foldstack.core.config import PipelineConfig
from foldstack.core.errors import DataError, shorten
from foldstack.core.files import has_key, rekeyed, write_json, write_parquet
from foldstack.core.paths import Paths
from foldstack.data.labels import Classes


def frame(ids: np.ndarray, classes: Classes, proba: np.ndarray, fold: np.ndarray | int | None = None) -> pd.DataFrame:
    """A predictions table: ``id``, ``fold`` (OOF only), then one float64 column per class (or
    ``score``)."""
    table = pd.DataFrame(np.asarray(proba, dtype=np.float64), columns=list(classes.columns))
    table.insert(0, "id", ids)
    if fold is not None:
        table.insert(1, "fold", fold)
    return table


def write(path: Path, ids: np.ndarray, classes: Classes, proba: np.ndarray,
          fold: np.ndarray | int | None = None) -> None:
    """Write OOF (with ``fold``) or test (without) predictions, checked first."""
    table = frame(ids, classes, proba, fold)
    _check_values(path, table.set_index("id")[list(classes.columns)], classes)
    write_parquet(path, table)


def write_test(path: Path, ids: np.ndarray, classes: Classes, proba: np.ndarray, key: str) -> None:
    """Write test predictions with the key of what made them (:func:`is_current` compares it)."""
    with rekeyed(path.with_suffix(".key"), key):
        write(path, ids, classes, proba)


def is_current(path: Path, key: str) -> bool:
    """Whether ``path`` holds test predictions made with ``key``."""
    return path.is_file() and has_key(path.with_suffix(".key"), key)


def write_pace(path: Path, seconds_per_image: float, images: int) -> None:
    """Beside test predictions ``path``: how long they took per test image, measured by ``predict``."""
    write_json(path.with_suffix(".pace.json"), {"seconds_per_image": seconds_per_image, "images": images})


def read_pace(path: Path) -> float | None:
    """Seconds per test image of the predictions at ``path``; None where never measured."""
    try:
        return float(json.loads(path.with_suffix(".pace.json").read_text(encoding="utf-8"))["seconds_per_image"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class LevelTwoData:
    """The base models' predictions as level-2 arrays.

    Attributes:
        models: model names, the order of the model axis.
        classes: the classes (:class:`Classes`), the order of the class axis.
        ids: training ids in folds.csv order.
        fold: each training id's fold.
        y: class indices ``(n,)``, or for multilabel a 0/1 matrix ``(n, C)``.
        oof: OOF probabilities ``(n, n_models, C)`` (ordinal: scores ``(n, n_models, 1)``).
        test_ids: test ids in the first model's order.
        test: test probabilities ``(n_test, n_models, C)`` (ordinal: ``(n_test, n_models, 1)``).
    """

    models: tuple[str, ...]
    classes: Classes
    ids: np.ndarray
    fold: np.ndarray
    y: np.ndarray
    oof: np.ndarray
    test_ids: np.ndarray
    test: np.ndarray


def load_level_two(cfg: PipelineConfig, paths: Paths) -> LevelTwoData:
    """Read folds.csv and every configured model's OOF and test predictions.

    Raises:
        DataError: a file is missing, lacks a class column, disagrees with folds.csv on ids or
            folds, or holds a value that is not a probability; the message names file and id.
    """
    folds = folds_file.read(paths.folds, cfg.folds.k).set_index("id")
    classes = folds_file.read_classes(paths.folds, cfg)
    models = tuple(model.name for model in cfg.models)
    oof = [read_oof(paths.oof / f"{model}.parquet", classes, folds, paths.folds) for model in models]
    test_ids, test = load_test(paths, models, classes)
    names = list(classes.columns)
    return LevelTwoData(
        models=models,
        classes=classes,
        ids=folds.index.to_numpy(),
        fold=folds["fold"].to_numpy(),
        y=classes.encode(folds["label"], paths.folds),
        oof=np.stack([table[names].to_numpy(np.float64) for table in oof], axis=1),
        test_ids=test_ids,
        test=test,
    )


def load_test(paths: Paths, models: tuple[str, ...], classes: Classes) -> tuple[np.ndarray, np.ndarray]:
    """Every model's test predictions: the ids (the first model's order) and the probabilities
    ``(n_test, n_models, C)``. Raises DataError as :func:`read_predictions` does."""
    # Test ids have no folds.csv to agree with: every model must agree with the first one.
    first = paths.test / f"{models[0]}.parquet"
    test_ids = read_predictions(first, classes).index
    names = list(classes.columns)
    tables = [read_predictions(paths.test / f"{model}.parquet", classes, expected=test_ids, reference=first)
              for model in models]
    return test_ids.to_numpy(), np.stack([table[names].to_numpy(np.float64) for table in tables], axis=1)


def read_predictions(path: Path, classes: Classes, *, extra: tuple[str, ...] = (),
                     expected: pd.Index | None = None, reference: Path | None = None) -> pd.DataFrame:
    """A predictions parquet indexed by id (strings), checked and reindexed to ``expected``.

    Args:
        path: the parquet file: ``id``, the ``extra`` columns, then one column per class (or ``score``).
        classes: the classes whose columns (:attr:`Classes.columns`) it must hold, no more, no less.
        expected: the ids it must hold exactly; the result follows their order.
        reference: the file ``expected`` came from, for messages.
    """
    if not path.is_file():
        stage = "predict" if path.parent.name == "test" else "train"
        raise DataError(f"{path}: not found; run the {stage} stage first")
    table = pd.read_parquet(path)
    table.columns = [str(column) for column in table.columns]
    names = list(classes.columns)
    wanted = ["id", *extra, *names]
    kind = f"one column: {names[0]}" if classes.one_column else f"classes: {shorten(names)}"
    missing = [column for column in wanted if column not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {shorten(missing)}; {kind}")
    unexpected = [column for column in table.columns if column not in wanted]
    if unexpected:
        raise DataError(f"{path}: column(s) {shorten(unexpected)} are not classes of folds.csv; {kind}")
    table = _index_by_id(table.assign(id=table["id"].astype(str)), path)
    if expected is not None:
        check_same_ids(path, table.index, expected, reference)
        table = table.reindex(expected)
    _check_values(path, table[names], classes)
    return table


def read_oof(path: Path, classes: Classes, folds: pd.DataFrame, reference: Path) -> pd.DataFrame:
    """OOF predictions for exactly the ids of ``folds`` (indexed by id, with a ``fold`` column),
    in their order; every row's fold must be the one ``folds`` gives it."""
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


def _check_values(path: Path, values: pd.DataFrame, classes: Classes) -> None:
    """Probabilities in [0, 1]; an ordinal score or a regression's value, a finite number (never
    read as a probability)."""
    if classes.one_column:
        array = values.to_numpy(np.float64)[:, 0]
        bad = np.flatnonzero(~np.isfinite(array))
        if len(bad):
            raise DataError(f"{path}: id {values.index[bad[0]]!r}: {values.columns[0]} {array[bad[0]]} is not a "
                            "finite number")
        return
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
