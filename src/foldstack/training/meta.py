"""A model's table columns (``meta``) as its network's second input, Keras-free.

The stages read the columns from the train and the test table (``data.tables.feature_table``,
which names the file, row and column of a bad cell) into :class:`MetaRows`, raw and row for row
with the images. A fold's process fits :class:`MetaScale` on the fold's training rows alone (its
validation rows never shape it), saves it in the fold's folder (:data:`NAME`, beside
``best.weights.h5``) and encodes every row with it; prediction (the test set, ``--images``, the
offline kernel from the bundle, which carries the fold's folder) and Grad-CAM read the same file,
so a row is encoded the same way wherever it is predicted.

Encoding: each number standardised by the training rows' mean and standard deviation, a missing
one 0 with an indicator column (1 where missing); each category one-hot over the training rows'
values (a missing cell is a value of its own), with one more column for a value the training rows
never had, so an unseen value at test time is "unknown", not an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from foldstack.core.config import MetaConfig
from foldstack.core.errors import DataError
from foldstack.core.files import write_json

#: The fold's encoding of its table columns, in its folder: written by training, read by
#: prediction and Grad-CAM.
NAME = "meta.json"


@dataclass(frozen=True)
class MetaRows:
    """Some rows' table columns as read, in the rows' order.

    Attributes:
        numbers: ``(n, len(spec.numeric))`` float64, NaN where missing.
        categories: ``(n, len(spec.categorical))`` strings, ``""`` where missing.
    """

    numbers: np.ndarray
    categories: np.ndarray

    @classmethod
    def of(cls, table: pd.DataFrame, spec: MetaConfig) -> MetaRows:
        """The columns of ``spec`` from a table read by ``data.tables.feature_table``."""
        numbers = table[spec.numeric].to_numpy(np.float64).reshape(len(table), len(spec.numeric))
        categories = table[spec.categorical].astype(object)
        categories = categories.where(categories.notna(), "").astype(str).to_numpy()
        return cls(numbers, categories.reshape(len(table), len(spec.categorical)))

    def __len__(self) -> int:
        return len(self.numbers)

    def take(self, rows: np.ndarray) -> MetaRows:
        return MetaRows(self.numbers[rows], self.categories[rows])


@dataclass(frozen=True)
class MetaScale:
    """How a fold encodes its table columns, learnt from its training rows.

    Attributes:
        numeric: the numeric columns, in order.
        mean: each one's mean over the training rows (missing cells left out; 0 if all are).
        std: its standard deviation there (1 where it is 0 or undefined).
        categorical: the categorical columns, in order.
        values: each one's values among the training rows, sorted.
    """

    numeric: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    categorical: tuple[str, ...]
    values: tuple[tuple[str, ...], ...]

    @classmethod
    def fit(cls, spec: MetaConfig, rows: MetaRows, index: np.ndarray) -> MetaScale:
        """The scale of ``rows[index]``: the fold's training rows, never its validation rows."""
        numbers, categories = rows.numbers[index], rows.categories[index]
        means, stds = [], []
        for column in numbers.T:
            present = column[~np.isnan(column)]
            mean = float(present.mean()) if len(present) else 0.0
            std = float(present.std()) if len(present) else 0.0
            means.append(mean)
            stds.append(std if std > 0 else 1.0)
        values = tuple(tuple(sorted(set(column.tolist()))) for column in categories.T)
        return cls(tuple(spec.numeric), tuple(means), tuple(stds), tuple(spec.categorical), values)

    @property
    def width(self) -> int:
        """The encoded row's length: two per number (value, missing), one per known category
        and one for unknown, per categorical column."""
        return 2 * len(self.numeric) + sum(len(known) + 1 for known in self.values)

    def encode(self, rows: MetaRows) -> np.ndarray:
        """``(n, width)`` float32: the numbers standardised (missing: 0, indicator 1), each
        category one-hot (unseen: the column's last, unknown, slot)."""
        missing = np.isnan(rows.numbers)
        scaled = (np.where(missing, 0.0, rows.numbers) - np.asarray(self.mean)) / np.asarray(self.std)
        parts = [np.where(missing, 0.0, scaled), missing.astype(np.float64)]
        for column, known in zip(rows.categories.T, self.values):
            slot = {value: i for i, value in enumerate(known)}
            codes = np.array([slot.get(value, len(known)) for value in column], dtype=np.int64)
            parts.append(np.eye(len(known) + 1)[codes])
        return np.concatenate(parts, axis=1).astype(np.float32)

    def save(self, fold_dir: Path) -> None:
        write_json(fold_dir / NAME, {"numeric": list(self.numeric), "mean": list(self.mean), "std": list(self.std),
                                     "categorical": list(self.categorical), "values": [list(v) for v in self.values]})

    @classmethod
    def load(cls, fold_dir: Path, spec: MetaConfig) -> MetaScale:
        """The fold's saved scale, checked to encode ``spec``'s columns.

        Raises:
            DataError: the file is missing, or was written for other columns.
        """
        path = fold_dir / NAME
        if not path.is_file():
            raise DataError(f"{path}: not found; train this fold again (its model reads table columns, meta)")
        saved = json.loads(path.read_text())
        scale = cls(tuple(saved["numeric"]), tuple(saved["mean"]), tuple(saved["std"]), tuple(saved["categorical"]),
                    tuple(tuple(v) for v in saved["values"]))
        if list(scale.numeric) != spec.numeric or list(scale.categorical) != spec.categorical:
            raise DataError(f"{path}: encodes columns {[*scale.numeric, *scale.categorical]}, not the model's meta "
                            f"{spec.used}; train this fold again")
        return scale


def fit_fold(spec: MetaConfig | None, rows: MetaRows | None, train_index: np.ndarray, fold_dir: Path) -> np.ndarray | None:
    """A training fold's encoded rows (every row, fitted on ``train_index`` alone), its scale
    saved in ``fold_dir``; None for a model without ``meta``."""
    if spec is None:
        return None
    if rows is None:
        raise ValueError("a model with meta needs its rows' table columns (FoldTask.meta)")
    scale = MetaScale.fit(spec, rows, train_index)
    scale.save(fold_dir)
    return scale.encode(rows)


def fold_inputs(spec: MetaConfig | None, rows: MetaRows | None, fold_dir: Path) -> np.ndarray | None:
    """``rows`` encoded by the scale the fold in ``fold_dir`` saved; None without ``meta``.

    Raises:
        DataError: the fold has no scale (or one of other columns), or no rows were given.
    """
    if spec is None:
        return None
    if rows is None:
        raise DataError(f"{fold_dir}: its model reads table columns (meta: {', '.join(spec.used)}), "
                        "which were not given")
    return MetaScale.load(fold_dir, spec).encode(rows)


def width(spec: MetaConfig | None, fold_dir: Path) -> int:
    """The encoded width of the fold's saved scale (its network's meta input); 0 without ``meta``."""
    return 0 if spec is None else MetaScale.load(fold_dir, spec).width
