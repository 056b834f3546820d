"""The one class order and the one label encoder, used by every stage.

Every prediction file names its class columns in :attr:`Classes.names` order, every target array
follows it, and labels become numbers only through :meth:`Classes.encode`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from foldstack.core.errors import DataError, shorten


@dataclass(frozen=True)
class Classes:
    """A task's classes in their one order, and the encoding of labels into them.

    Attributes:
        names: the class names: sorted, numerically when every name is a number (``2`` before
            ``10``), else as strings.
        multilabel: a label cell holds several space-separated classes (or none).
        ordinal: the classes are ordered grades and predictions are one score (``task: ordinal``).
    """

    names: tuple[str, ...]
    multilabel: bool = False
    ordinal: bool = False

    #: The one prediction column of an ordinal task.
    SCORE = "score"

    @classmethod
    def from_labels(cls, labels: pd.Series, task: str, source: Path | str = "labels") -> Classes:
        """The classes that occur in ``labels`` (label cells as strings).

        Raises:
            DataError: ``task`` is ordinal and a label is not a number (grades are ordered by value).
        """
        multilabel = task == "multilabel"
        # A multilabel row may hold no label at all; explode turns it into NaN, not a class.
        values = labels.astype(str).str.split().explode().dropna() if multilabel else labels.astype(str)
        unique = sorted(set(values))
        numeric = all(_is_number(name) for name in unique)
        if unique and numeric:
            unique.sort(key=float)
        if task == "ordinal" and not numeric:
            label = next(name for name in unique if not _is_number(name))
            raise DataError(f"{source}: task 'ordinal' needs numeric grades; label {label!r} is not a number")
        return cls(tuple(unique), multilabel, ordinal=task == "ordinal")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def columns(self) -> tuple[str, ...]:
        """The prediction files' value columns: one per class, or ``score`` for an ordinal task."""
        return (self.SCORE,) if self.ordinal else self.names

    def encode(self, labels: pd.Series, source: Path | str = "labels") -> np.ndarray:
        """Labels as metrics and level two take them: class indices ``(n,)``, or for multilabel
        a 0/1 matrix ``(n, C)``.

        Raises:
            DataError: a label is not one of :attr:`names`; names ``source`` and the row's index
                (an id when ``labels`` is indexed by id).
        """
        position = {name: i for i, name in enumerate(self.names)}
        cells = labels.astype(str)
        if self.multilabel:
            matrix = np.zeros((len(cells), len(self.names)), dtype=np.int64)
            for row, (key, cell) in enumerate(cells.items()):
                for name in cell.split():
                    if name not in position:
                        self._unknown(source, key, name)
                    matrix[row, position[name]] = 1
            return matrix
        codes = cells.map(position)
        if codes.isna().any():
            key = codes.index[codes.isna()][0]
            self._unknown(source, key, cells[key])
        return codes.to_numpy(np.int64)

    def targets(self, y: np.ndarray) -> np.ndarray:
        """Encoded labels as a network's float32 targets: one-hot rows, or the 0/1 matrix."""
        if self.multilabel:
            return np.asarray(y, dtype=np.float32)
        return np.eye(len(self.names), dtype=np.float32)[y]

    def _unknown(self, source: Path | str, key, label: str) -> None:
        raise DataError(f"{source}: id {key!r} has label {label!r}, which is not a class; "
                        f"classes: {shorten(self.names)}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
