"""``models/<model>/fold<k>/log.csv``: a fold's loss and held-out score per epoch.

Written by Keras's CSVLogger during training (``training.callbacks.ResumableCSVLogger``, one
row per epoch: ``epoch``, ``loss``, ``val_score`` and whatever else Keras logs), read by the
``report`` stage for the training curves.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from foldstack.core.errors import DataError

NAME = "log.csv"


def read(path: Path) -> pd.DataFrame | None:
    """A fold's log, one row per epoch in order, or None where the fold has none.

    Raises:
        DataError: it has no ``epoch`` column or no rows.
    """
    if not path.is_file():
        return None
    try:
        log = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataError(f"{path}: not a CSV log ({error})") from None
    if "epoch" not in log.columns or log.empty:
        raise DataError(f"{path}: no 'epoch' column or no rows; train the fold again")
    return log.sort_values("epoch", kind="stable").reset_index(drop=True)
