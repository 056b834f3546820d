"""``stack/``: what the stack stage chose and its predictions, read by ``submit``.

``leaderboard.csv`` (every candidate's CV, fold by fold), ``chosen.json`` (the chosen
candidate, its metric and CV, the base models), and the chosen candidate's ``oof.parquet`` and
``test.parquet`` in the shapes of :mod:`foldstack.contracts.predictions`. The stage writes them
into one folder that replaces the old one whole, so ``submit`` never pairs a new leaderboard with
an old ``chosen.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from foldstack.contracts import predictions
from foldstack.core.errors import DataError
from foldstack.core.files import write_csv, write_json
from foldstack.data.labels import Classes

CHOSEN = "chosen.json"
LEADERBOARD = "leaderboard.csv"
OOF = "oof.parquet"
TEST = "test.parquet"


@dataclass(frozen=True)
class StackOutput:
    """What the stack stage chose: its name and CV, and its test probabilities by id."""

    name: str
    metric: str
    cv_mean: float
    cv_std: float
    proba: pd.DataFrame


def write(folder: Path, board: pd.DataFrame, chosen: dict, classes: Classes, ids: np.ndarray,
          fold: np.ndarray, oof: np.ndarray, test_ids: np.ndarray, test: np.ndarray) -> None:
    """Write the leaderboard, ``chosen.json`` and the chosen candidate's OOF and test predictions."""
    write_csv(folder / LEADERBOARD, board)
    predictions.write(folder / OOF, ids, classes, oof, fold=fold)
    predictions.write(folder / TEST, test_ids, classes, test)
    write_json(folder / CHOSEN, chosen)


def read(folder: Path) -> StackOutput:
    """The chosen candidate (``chosen.json``) and its test probabilities (``test.parquet``).

    Raises:
        DataError: a file is missing or its predictions break the predictions contract.
    """
    chosen_path = folder / CHOSEN
    if not chosen_path.is_file():
        raise DataError(f"{chosen_path}: not found; run the stack stage first")
    chosen = json.loads(chosen_path.read_text(encoding="utf-8"))
    test_path = folder / TEST
    columns = pd.read_parquet(test_path).columns if test_path.is_file() else []
    classes = Classes(tuple(str(column) for column in columns if column != "id"))
    proba = predictions.read_predictions(test_path, classes)
    return StackOutput(chosen["name"], chosen["metric"], chosen["cv_mean"], chosen["cv_std"], proba)


def read_oof(folder: Path, classes: Classes, folds: pd.DataFrame, reference: Path) -> pd.DataFrame:
    """The chosen candidate's OOF probabilities (``oof.parquet``), indexed by id in ``folds``'s
    order (``folds``: folds.csv indexed by id; ``reference``: its path, for messages)."""
    return predictions.read_oof(folder / OOF, classes, folds, reference).loc[folds.index]


def read_leaderboard(folder: Path) -> pd.DataFrame:
    """``leaderboard.csv``: every candidate's CV, best first (``candidate, cv_mean, cv_std,
    fold_<k>..., chosen``).

    Raises:
        DataError: it is missing.
    """
    path = folder / LEADERBOARD
    if not path.is_file():
        raise DataError(f"{path}: not found; run the stack stage first")
    return pd.read_csv(path)
