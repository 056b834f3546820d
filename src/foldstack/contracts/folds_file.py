"""``folds.csv``: ``id, label, fold``, one row per training image, the same on every run for the
same seed. Written by the folds stage; read, with its checks, by the train and stack stages."""

from __future__ import annotations

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
