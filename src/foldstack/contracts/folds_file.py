"""``folds.csv``: ``id, label, fold``, one row per training image, the same on every run for the
same seed; and beside it ``classes.json``, the task's class order, derived once with the folds.
Written by the folds stage; read, with their checks, by every stage after it.

``classes.json`` holds ``task``, ``names`` (the one class order, a binary task's positive class
second; none for a regression), ``multilabel``, ``ordinal`` and ``regression``: what :class:`~foldstack.data.labels.Classes` is. No later
stage derives the classes again, so a positive class taken from the sample submission holds on a
machine without it (a Kaggle bundle), and a new ``positive_class`` is new folds (:func:`digest`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from foldstack.core.config import PipelineConfig
from foldstack.core.errors import DataError
from foldstack.core.files import write_csv, write_json
from foldstack.data.labels import Classes
from foldstack.data.tables import read_csv, require_columns

COLUMNS = ["id", "label", "fold"]

#: The class order's file, beside ``folds.csv``.
CLASSES = "classes.json"

#: The external data's rows (``data.extra``), beside ``folds.csv``: they train in every fold.
EXTRA = "extra.csv"
EXTRA_COLUMNS = ["id", "label", "dataset", "bytes"]


def extra_path(folds: Path) -> Path:
    """``extra.csv`` beside the folds file ``folds``."""
    return folds.with_name(EXTRA)


def write_extra(path: Path, extra: pd.DataFrame) -> None:
    """Write the external rows (``id, label, dataset, bytes``: the image file's size) beside the
    folds file ``path``; none: no file."""
    if len(extra):
        write_csv(extra_path(path), extra[EXTRA_COLUMNS])
    else:
        extra_path(path).unlink(missing_ok=True)


def read_extra(path: Path) -> pd.DataFrame:
    """The external rows written beside the folds file ``path`` (``id, label, dataset, bytes``),
    in order; empty where there are none.

    Raises:
        DataError: the file lacks a column or repeats an id.
    """
    source = extra_path(path)
    if not source.is_file():
        return pd.DataFrame(columns=EXTRA_COLUMNS)
    frame = read_csv(source, "external rows (run `make folds`)")
    require_columns(frame, EXTRA_COLUMNS, source)
    if frame["id"].duplicated().any():
        raise DataError(f"{source}: id {frame['id'][frame['id'].duplicated()].iloc[0]!r} appears twice")
    return frame[EXTRA_COLUMNS]


def classes_path(folds: Path) -> Path:
    """``classes.json`` beside the folds file ``folds``."""
    return folds.with_name(CLASSES)


def write(path: Path, frame: pd.DataFrame, classes: Classes, task: str) -> None:
    """Write the ``id, label, fold`` columns of ``frame`` and, beside them, ``classes``."""
    write_json(classes_path(path), {"task": task, **_order(classes)})
    write_csv(path, frame[COLUMNS])


def read_classes(path: Path, cfg: PipelineConfig) -> Classes:
    """The class order written with the folds file ``path`` (``classes.json`` beside it).

    Raises:
        DataError: the file is missing or unreadable, or it was written for another task or
            another ``positive_class`` than the pipeline's (run `make folds` again).
    """
    source = classes_path(path)
    if not source.is_file():
        raise DataError(f"{source}: not found; run `make folds` (it writes the class order beside folds.csv)")
    try:
        raw = json.loads(source.read_text(encoding="utf-8"))
        task, names = raw["task"], tuple(str(name) for name in raw["names"])
        classes = Classes(names, multilabel=bool(raw["multilabel"]), ordinal=bool(raw["ordinal"]),
                          regression=bool(raw.get("regression", False)))
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{source}: not a class order ({type(error).__name__}: {error}); run `make folds` again") from None
    if task != cfg.task:
        raise DataError(f"{source}: written for task {task!r} but the pipeline's task is {cfg.task!r}; "
                        "run `make folds` again")
    positive = cfg.positive_class
    if task == "binary" and positive is not None and len(names) == 2 and names[1] != positive:
        raise DataError(f"{source}: class {names[1]!r} is the positive one but positive_class = {positive!r}; "
                        "run `make folds` again")
    return classes


def read(path: Path, k: int) -> pd.DataFrame:
    """``folds.csv``, checked: the three columns, unique ids, integer folds ``0 .. k-1``.

    Ids and labels stay strings as written (``007`` stays ``007``); ``fold`` is an integer.

    Raises:
        DataError: the file is missing or breaks a rule; names the file and the first bad id.
    """
    frame = read_csv(path, "folds file (run `make folds`)")
    require_columns(frame, COLUMNS, path)
    if frame["id"].duplicated().any():
        raise DataError(f"{path}: id {frame['id'][frame['id'].duplicated()].iloc[0]!r} appears twice")
    try:
        frame["fold"] = frame["fold"].astype(int)
    except ValueError:
        raise DataError(f"{path}: column 'fold' must hold integers") from None
    # A folds.csv from another folds.k would leave folds untrained and ids without a prediction.
    found = sorted(frame["fold"].unique().tolist())
    if found != list(range(k)):
        raise DataError(f"{path}: holds folds {found} but folds.k = {k}; run `make folds` again")
    return frame[COLUMNS]


def digest(frame: pd.DataFrame, classes: Classes, extra: pd.DataFrame | None = None) -> str:
    """A sha256 of the folds' rows, their class order (``classes``) and the external rows
    (``extra``, :func:`read_extra`): part of every fold's recipe
    (``fold_task.recipe_fingerprint``), so new folds, the same folds with another positive
    class, or changed external data train again."""
    rows = hashlib.sha256(pd.util.hash_pandas_object(frame[COLUMNS], index=False).values).hexdigest()
    content = {"rows": rows, "classes": _order(classes)}
    if extra is not None and len(extra):  # without external rows, the digest of before
        content["extra"] = extra_digest(extra)
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _order(classes: Classes) -> dict:
    """What ``classes.json`` holds of ``classes`` (and the digest hashes)."""
    order = {"names": list(classes.names), "multilabel": classes.multilabel, "ordinal": classes.ordinal}
    # A classification's digest stays what it was before regressions existed: no retraining.
    return {**order, "regression": True} if classes.regression else order


def extra_digest(extra: pd.DataFrame) -> str:
    """A sha256 of the external rows (:func:`read_extra`): ids, labels, datasets, file sizes."""
    return hashlib.sha256(pd.util.hash_pandas_object(extra[EXTRA_COLUMNS].astype(str), index=False).values).hexdigest()


def image_files(folds: pd.DataFrame, table: pd.DataFrame, path: Path) -> list[str]:
    """The image of each row of ``folds`` (read from ``path``), after checking that it still
    matches the train ``table`` (``id, label, path``).

    Raises:
        DataError: an id or a label differs; run `make folds` again.
    """
    table = table.set_index("id")
    unknown = folds.loc[~folds["id"].isin(table.index), "id"]
    if len(unknown) or len(table) != len(folds):
        example = unknown.iloc[0] if len(unknown) else sorted(set(table.index) - set(folds["id"]))[0]
        raise DataError(f"{path}: ids differ from the train table (e.g. {example!r}); run `make folds` again")
    # A label edited in the train table after `folds` ran would otherwise train on the old one.
    relabelled = folds["label"].to_numpy() != table.loc[folds["id"], "label"].to_numpy()
    if relabelled.any():
        row = folds[relabelled].iloc[0]
        raise DataError(f"{path}: id {row['id']!r} has label {row['label']!r} but the train "
                        f"table says {table.loc[row['id'], 'label']!r}; run `make folds` again")
    return table.loc[folds["id"], "path"].tolist()
