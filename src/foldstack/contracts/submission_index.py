"""``submissions/<pipeline>/index.csv``: every submission written, with its CV and scores.

Written by the ``submit`` stage (one row per file, a rewritten file replacing its row), read by
the ``report`` stage. Columns: ``file, candidate, metric, cv_mean, cv_std, local_lb,
written_at``, and ``public_lb`` where a public score was recorded.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from foldstack.core.errors import DataError
from foldstack.core.files import write_csv

NAME = "index.csv"
REQUIRED = ("file", "cv_mean")


def update(path: Path, entry: dict) -> pd.DataFrame:
    """Add ``entry`` to the index of submissions, replacing an older row for the same file."""
    index = pd.read_csv(path, dtype={"file": str}) if path.is_file() else pd.DataFrame(columns=list(entry))
    index = pd.concat([index[index["file"] != entry["file"]], pd.DataFrame([entry])], ignore_index=True)
    write_csv(path, index)
    return index


def read(path: Path) -> pd.DataFrame | None:
    """The index, or None where no submission was written yet.

    Raises:
        DataError: it lacks a required column.
    """
    if not path.is_file():
        return None
    index = pd.read_csv(path, dtype={"file": str})
    missing = [column for column in REQUIRED if column not in index.columns]
    if missing:
        raise DataError(f"{path}: no column {missing[0]!r}; run the submit stage again")
    return index
