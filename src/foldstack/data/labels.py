"""The one class order and the one label encoder, used by every stage.

Every prediction file names its class columns in :attr:`Classes.names` order, every target array
follows it, and labels become numbers only through :meth:`Classes.encode`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from foldstack.core.config import ConfigError
from foldstack.core.errors import DataError, shorten


@dataclass(frozen=True)
class Classes:
    """A task's classes in their one order, and the encoding of labels into them.

    Attributes:
        names: the class names: sorted, numerically when every name is a number (``2`` before
            ``10``), else as strings.
        multilabel: a label cell holds several classes joined by :data:`SEPARATOR` (or none).
        ordinal: the classes are ordered grades and predictions are one score (``task: ordinal``).
        regression: no classes (``names`` is empty): a label is a number, encoded as a float,
            and predictions are one value (``task: regression``).
    """

    names: tuple[str, ...]
    multilabel: bool = False
    ordinal: bool = False
    regression: bool = False

    #: The one prediction column of an ordinal task.
    SCORE = "score"
    #: The one prediction column of a regression.
    PREDICTION = "prediction"

    @classmethod
    def from_labels(cls, labels: pd.Series, task: str, positive: str | None = None,
                    source: Path | str = "labels") -> Classes:
        """The classes that occur in ``labels`` (label cells as strings).

        A binary task's positive class goes second (index 1), where every metric and the
        ``binary`` submission column read it: ``positive`` where given, else ``1`` of ``0``/``1``
        (``True`` of ``False``/``True``).

        Raises:
            ConfigError: a binary task with two other classes and no ``positive`` (which one is
                positive cannot be guessed: ``cactus``/``none`` sorted would invert every
                prediction), or a ``positive`` that is not one of the classes.
            DataError: ``task`` is ordinal and a label is not a number (grades are ordered by
                value); names ``source``.
        """
        if task == "regression":
            numbers(labels, source)  # one line naming the first row that is not a number
            return cls((), regression=True)
        multilabel = task == "multilabel"
        unique = sorted(set(every_label(labels, multilabel)))
        numeric = all(_is_number(name) for name in unique)
        if unique and numeric:
            unique.sort(key=float)
        if task == "ordinal" and not numeric:
            label = next(name for name in unique if not _is_number(name))
            raise DataError(f"{source}: task 'ordinal' needs numeric grades; label {label!r} is not a number")
        if task == "binary" and len(unique) == 2:
            unique = _positive_second(unique, positive)
        return cls(tuple(unique), multilabel, ordinal=task == "ordinal")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def columns(self) -> tuple[str, ...]:
        """The prediction files' value columns: one per class, ``score`` for an ordinal task,
        ``prediction`` for a regression."""
        if self.regression:
            return (self.PREDICTION,)
        return (self.SCORE,) if self.ordinal else self.names

    @property
    def one_column(self) -> bool:
        """Predictions are one number per row (an ordinal score, a regression's value)."""
        return self.ordinal or self.regression

    def encode(self, labels: pd.Series, source: Path | str = "labels") -> np.ndarray:
        """Labels as metrics and level two take them: class indices ``(n,)``, for multilabel
        a 0/1 matrix ``(n, C)``, for a regression the numbers, float64 ``(n,)``.

        Raises:
            DataError: a label is not one of :attr:`names` (a regression's: not a number); names
                ``source`` and the row's index (an id when ``labels`` is indexed by id).
        """
        if self.regression:
            return numbers(labels, source)
        position = {name: i for i, name in enumerate(self.names)}
        cells = labels.astype(str)
        if self.multilabel:
            matrix = np.zeros((len(cells), len(self.names)), dtype=np.int64)
            for row, (key, names) in enumerate(split_labels(cells).items()):
                for name in names:
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


def numbers(labels: pd.Series, source: Path | str = "labels") -> np.ndarray:
    """A regression's targets as float64 ``(n,)``.

    Raises:
        DataError: a cell is not a finite number; names ``source`` and the row's index.
    """
    values = pd.to_numeric(labels, errors="coerce").astype(np.float64)
    bad = ~np.isfinite(values.to_numpy())
    if bad.any():
        key = labels.index[np.argmax(bad)]
        raise DataError(f"{source}: id {key!r} has target {labels[key]!r}, which is not a number "
                        "(task 'regression')")
    return values.to_numpy()


#: What separates a multilabel cell's classes in the train table and ``folds.csv``. Not a space:
#: a class named after a one-hot column may hold spaces (ranzcr's ``ETT - Abnormal``). A
#: competition's own space-separated label column (imet's ``attribute_ids``) is converted on reading.
SEPARATOR = "|"


def split_labels(cells: pd.Series) -> pd.Series:
    """Each multilabel cell as the list of its classes (an empty cell: no class)."""
    return cells.astype(str).map(lambda cell: [name for name in cell.split(SEPARATOR) if name])


def every_label(cells: pd.Series, multilabel: bool) -> pd.Series:
    """Every label of every row, one an item: a multilabel row's each (a row without a label
    gives none), else the cell itself as a string."""
    return flat_labels(split_labels(cells)) if multilabel else cells.astype(str)


def flat_labels(rows: pd.Series) -> pd.Series:
    """The labels of rows already split (:func:`split_labels`), one an item; an empty row gives none."""
    return rows.explode().dropna()


def join_labels(names) -> str:
    """One multilabel cell holding ``names``."""
    return SEPARATOR.join(names)


#: Binary classes whose positive one is plain without a ``positive_class`` (the second of each).
OBVIOUS_BINARY = (("0", "1"), ("False", "True"), ("false", "true"))


def _positive_second(names: list[str], positive: str | None) -> list[str]:
    if positive is None:
        if tuple(names) in OBVIOUS_BINARY:
            return names
        raise ConfigError(f"binary task: say which class is positive with positive_class: {names[0]}|{names[1]}")
    if positive not in names:
        raise ConfigError(f"positive_class = {positive!r} is not a class; the classes are {names[0]}, {names[1]}")
    return [name for name in names if name != positive] + [positive]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class FineClasses:
    """A main table's finer classes (``data.train_label``), which the networks train on, and how
    their probabilities sum onto the scored classes (``data.label_map``).

    Built from the config alone (the fine names are ``label_map``'s keys, sorted as
    :class:`Classes` sorts), so a machine without the train table (a kernel) sums the same way.

    Attributes:
        classes: the fine classes, the networks' outputs in this order.
        onto: ``(n_fine, n_scored)``, 1 where a fine class belongs to a scored class.
    """

    classes: Classes
    onto: np.ndarray

    @classmethod
    def of(cls, label_map: dict[str, str], scored: Classes) -> FineClasses:
        """Raises ConfigError: a ``label_map`` value that is not a scored class."""
        fine = Classes.from_labels(pd.Series(sorted(label_map)), "multiclass")
        onto = np.zeros((len(fine), len(scored)), np.float32)
        for i, name in enumerate(fine.names):
            if label_map[name] not in scored.names:
                raise ConfigError(f"data.label_map: {name!r} -> {label_map[name]!r}, not a scored class "
                                  f"({', '.join(scored.names)})")
            onto[i, scored.names.index(label_map[name])] = 1.0
        return cls(fine, onto)

    def summed(self, proba: np.ndarray) -> np.ndarray:
        """Fine probabilities ``(n, n_fine)`` summed onto the scored classes ``(n, n_scored)``."""
        return np.asarray(proba, np.float64) @ self.onto
