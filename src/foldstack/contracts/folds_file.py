"""``folds.csv``: ``id, label, fold``, one row per training image, the same on every run for the
same seed. Written by the folds stage; read, with its checks, by the train and stack stages."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from foldstack.core.errors import DataError
from foldstack.core.files import write_csv
from foldstack.data.tables import read_csv, require_columns

COLUMNS = ["id", "label", "fold"]


def write(path: Path, frame: pd.DataFrame) -> None:
    """Write the ``id, label, fold`` columns of ``frame``."""
    write_csv(path, frame[COLUMNS])


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


def digest(frame: pd.DataFrame) -> str:
    """A sha256 of the folds' rows: part of every fold's recipe, so new folds train again."""
    return hashlib.sha256(pd.util.hash_pandas_object(frame[COLUMNS], index=False).values).hexdigest()


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
