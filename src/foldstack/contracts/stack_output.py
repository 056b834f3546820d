"""``stack/``: what the stack stage chose, the level-two model it fitted, and its predictions,
read by ``submit`` and by ``predict --images``.

``leaderboard.csv`` (every candidate's CV, fold by fold), ``chosen.json`` (the chosen
candidate, its metric and CV, the base models, the classes in order, ``cv_key``: what the
CV was run on, ``ordinal``, and the values of its decision rule (:mod:`foldstack.level2.decision`)
under the rule's name: for multilabel ``thresholds``: ``{"mode": ..., "values": {class:
threshold}}``, the probability at which each class is predicted; for an ordinal task ``cuts``,
the cut points that turn its score into grades, a list), ``level2/<candidate>.pkl`` (the chosen
candidate fitted on every OOF row), and
its ``oof.parquet`` (from CV) and ``test.parquet`` (from the saved model) in the shapes of
:mod:`foldstack.contracts.predictions`. After a CV the stage writes them into one folder that
replaces the old one whole, so ``submit`` never pairs a new leaderboard with an old
``chosen.json``; applying the saved model to new test predictions rewrites ``test.parquet`` alone.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from foldstack.contracts import predictions
from foldstack.core.errors import DataError
from foldstack.core.files import atomic_path, write_csv, write_json
from foldstack.core.metrics import hard_predictions, one_hot
from foldstack.data.labels import Classes
from foldstack.level2 import ordinal, thresholds
from foldstack.level2.base import Level2Estimator
from foldstack.level2.decision import FIXED
from foldstack.level2.selection import RULES, as_submitted

CHOSEN = "chosen.json"
LEADERBOARD = "leaderboard.csv"
OOF = "oof.parquet"
TEST = "test.parquet"
#: A regression's picture of the chosen candidate's OOF predictions against the targets (the
#: classification tasks have ``confusion.png``).
PREDICTED = "predicted.png"
LEVEL2 = "level2"


@dataclass(frozen=True)
class StackOutput:
    """What the stack stage chose: its name and CV, and its test probabilities by id (one
    column per class; for an ordinal task, the grades its cut points give, as 0/1 rows)."""

    name: str
    metric: str
    cv_mean: float
    cv_std: float
    proba: pd.DataFrame
    thresholds: pd.Series | None = None
    """Multilabel: each class's threshold, indexed by class name; None: 0.5 for every class."""


@dataclass(frozen=True)
class FittedStack:
    """The chosen candidate fitted on every OOF row, as saved.

    Attributes:
        name: the candidate.
        models: the base models whose predictions it takes, in the order of its model axis.
        classes: the classes, in the order of its class axis.
        estimator: the fitted level-two estimator.
        rule: its decision rule's name (``thresholds``: multilabel; ``cuts``: ordinal), else None.
        mode: how the rule's values were chosen (``stack.thresholds``: fixed, global, per_class;
            cuts: fitted).
        values: the rule's values (thresholds in ``classes`` order; the cut points); None: none.
    """

    name: str
    models: tuple[str, ...]
    classes: Classes
    estimator: Level2Estimator
    rule: str | None = None
    mode: str | None = None
    values: tuple[float, ...] | None = None

    @property
    def thresholds(self) -> tuple[float, ...] | None:
        """Multilabel: the probability at which each class is predicted; None: 0.5."""
        return self.values if self.rule == thresholds.RULE.name else None

    @property
    def cuts(self) -> tuple[float, ...] | None:
        """An ordinal task's cut points (its score to grades), else None."""
        return self.values if self.rule == ordinal.RULE.name else None

    @property
    def takes_table(self) -> bool:
        """Whether it was fitted with table columns (``stack.features``): it needs the rows' table."""
        return self.estimator.takes_table

    def predict_proba(self, X: np.ndarray, table: pd.DataFrame | None = None) -> np.ndarray:
        """Probabilities ``(n, C)`` from base-model probabilities ``(n, n_models, C)`` (and, where
        :attr:`takes_table`, the rows' table columns), as submitted (single-label rows summing
        to 1, as CV scored them); an ordinal task's scores ``(n, 1)`` from the models' ``(n, n_models, 1)``."""
        return as_submitted(self.estimator.predict_proba(X, table), self.classes.multilabel)

    def hard(self, output: np.ndarray) -> np.ndarray:
        """Predicted classes of the candidate's output at its rule's values
        (:func:`foldstack.core.metrics.hard_predictions`)."""
        values = None if self.values is None else np.asarray(self.values)
        return hard_predictions(output, self.classes.multilabel, values, len(self.classes))


def grade_rows(score: pd.DataFrame, classes: Classes, cuts: np.ndarray) -> pd.DataFrame:
    """An ordinal score table (indexed by id, column ``score``) as the grades its cut points
    give: one 0/1 column per grade, a 1 at the row's grade (what ``submit`` writes as a label)."""
    chosen = hard_predictions(score[[Classes.SCORE]].to_numpy(), False, np.asarray(cuts), len(classes))
    return pd.DataFrame(one_hot(chosen, len(classes)).astype(np.float64), index=score.index,
                        columns=list(classes.names))


def write(folder: Path, board: pd.DataFrame, chosen: dict, fitted: FittedStack, ids: np.ndarray,
          fold: np.ndarray, oof: np.ndarray, test_ids: np.ndarray, test: np.ndarray) -> None:
    """Write the leaderboard, the fitted model, ``chosen.json`` (with the fitted model's base
    models and classes) and the chosen candidate's OOF and test predictions."""
    write_csv(folder / LEADERBOARD, board)
    with atomic_path(folder / LEVEL2 / f"{fitted.name}.pkl") as tmp:
        tmp.write_bytes(pickle.dumps(fitted.estimator))
    predictions.write(folder / OOF, ids, fitted.classes, oof, fold=fold)
    write_test(folder, test_ids, fitted.classes, test)
    write_json(folder / CHOSEN, {**chosen, "name": fitted.name, "models": list(fitted.models),
                                 "classes": list(fitted.classes.names), "multilabel": fitted.classes.multilabel,
                                 "ordinal": fitted.classes.ordinal, **_regression(fitted.classes),
                                 **_saved_rule(fitted)})


def _regression(classes: Classes) -> dict:
    """``chosen.json``'s mark of a regression (absent for the classification tasks)."""
    return {"regression": True} if classes.regression else {}


def _saved_rule(fitted: FittedStack) -> dict:
    """The decision rule's entry of ``chosen.json``, under its name: a per-class rule's values by
    class name, with its mode; an ordered rule's values as a list."""
    if fitted.rule is None:
        return {}
    values = [float(value) for value in fitted.values]
    if not RULES[fitted.rule].per_class:
        return {fitted.rule: values}
    return {fitted.rule: {"mode": fitted.mode, "values": dict(zip(fitted.classes.names, values))}}


def _read_rule(chosen: dict, classes: Classes, path: Path) -> tuple[str | None, str | None, np.ndarray | None]:
    """The decision rule's name, mode and values (in ``classes`` order) from ``chosen.json``;
    Nones where it holds none (a single-label task; ``cuts: null``, as earlier stages wrote).

    Raises:
        DataError: a class has no value, or an ordered rule has the wrong number of them.
    """
    name = next((name for name in RULES if chosen.get(name) is not None), None)
    if name is None:
        if classes.ordinal:
            raise DataError(f"{path}: an ordinal task needs {len(classes) - 1} cut points in 'cuts'; "
                            f"run the stack stage again")
        return None, None, None
    entry = chosen[name]
    if not RULES[name].per_class:
        if not isinstance(entry, list) or len(entry) != len(classes) - 1:
            raise DataError(f"{path}: {name!r} needs {len(classes) - 1} values for {len(classes)} classes; "
                            f"run the stack stage again")
        return name, RULES[name].modes[0], np.asarray(entry, dtype=np.float64)
    values = pd.Series(entry["values"], dtype=np.float64)
    missing = [label for label in classes.names if label not in values.index]
    if missing:
        raise DataError(f"{path}: no {name} value for class {missing[0]!r}; run the stack stage again")
    return name, entry.get("mode", FIXED), values.loc[list(classes.names)].to_numpy()


def write_test(folder: Path, test_ids: np.ndarray, classes: Classes, test: np.ndarray) -> None:
    """Write (or replace) the chosen candidate's test predictions."""
    predictions.write(folder / TEST, test_ids, classes, test)


def read_chosen(folder: Path) -> dict | None:
    """``chosen.json`` as written, or None where there is none."""
    path = folder / CHOSEN
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def model_saved(folder: Path) -> bool:
    """Whether ``folder`` holds a chosen candidate's saved model with its classes."""
    chosen = read_chosen(folder)
    return chosen is not None and "classes" in chosen and (folder / LEVEL2 / f"{chosen['name']}.pkl").is_file()


def read_model(folder: Path, models: tuple[str, ...]) -> FittedStack:
    """The saved level-two model, with its base models and classes, for a pipeline whose base
    models are ``models`` (in order).

    Raises:
        DataError: ``chosen.json`` or the model file is missing, was written without them, or
            stacks other base models than ``models``.
    """
    chosen = read_chosen(folder)
    if chosen is None:
        raise DataError(f"{folder / CHOSEN}: not found; run the stack stage first")
    path = folder / LEVEL2 / f"{chosen['name']}.pkl"
    if not path.is_file() or "classes" not in chosen:
        raise DataError(f"{path}: not found; run the stack stage again (with the OOF files) to fit and save it")
    # Our own file, written by the stack stage: the same trust as the model weights beside it.
    estimator = pickle.loads(path.read_bytes())
    classes = _classes(chosen)
    if tuple(chosen["models"]) != tuple(models):
        raise DataError(f"{folder / CHOSEN}: stacks models {', '.join(chosen['models'])} but the pipeline has "
                        f"{', '.join(models)}; run the stack stage again with their OOF files")
    rule, mode, values = _read_rule(chosen, classes, folder / CHOSEN)
    return FittedStack(chosen["name"], tuple(chosen["models"]), classes, estimator, rule, mode,
                       None if values is None else tuple(values.tolist()))


def _classes(chosen: dict) -> Classes:
    return Classes(tuple(chosen["classes"]), multilabel=bool(chosen["multilabel"]),
                   ordinal=bool(chosen.get("ordinal", False)), regression=bool(chosen.get("regression", False)))


def read(folder: Path) -> StackOutput:
    """The chosen candidate (``chosen.json``) and its test probabilities (``test.parquet``); an
    ordinal task's test scores as the grades the saved cut points give (:func:`grade_rows`).

    Raises:
        DataError: a file is missing or its predictions break the predictions contract.
    """
    chosen_path = folder / CHOSEN
    if not chosen_path.is_file():
        raise DataError(f"{chosen_path}: not found; run the stack stage first")
    chosen = json.loads(chosen_path.read_text(encoding="utf-8"))
    test_path = folder / TEST
    if chosen.get("ordinal"):
        classes = _classes(chosen)
        _, _, cuts = _read_rule(chosen, classes, chosen_path)
        return StackOutput(chosen["name"], chosen["metric"], chosen["cv_mean"], chosen["cv_std"],
                           grade_rows(predictions.read_predictions(test_path, classes), classes, cuts))
    if chosen.get("regression"):
        return StackOutput(chosen["name"], chosen["metric"], chosen["cv_mean"], chosen["cv_std"],
                           predictions.read_predictions(test_path, _classes(chosen)))
    columns = pd.read_parquet(test_path).columns if test_path.is_file() else []
    classes = Classes(tuple(str(column) for column in columns if column != "id"))
    proba = predictions.read_predictions(test_path, classes)
    rule, _, values = _read_rule(chosen, classes, chosen_path)
    by_class = pd.Series(values, index=list(classes.names)) if rule == thresholds.RULE.name else None
    return StackOutput(chosen["name"], chosen["metric"], chosen["cv_mean"], chosen["cv_std"], proba, by_class)


def read_oof(folder: Path, classes: Classes, folds: pd.DataFrame, reference: Path) -> pd.DataFrame:
    """The chosen candidate's OOF probabilities (``oof.parquet``), indexed by id in ``folds``'s
    order (``folds``: folds.csv indexed by id; ``reference``: its path, for messages); an
    ordinal task's OOF scores as the grades the saved cut points give (:func:`grade_rows`)."""
    table = predictions.read_oof(folder / OOF, classes, folds, reference).loc[folds.index]
    if not classes.ordinal:
        return table
    _, _, cuts = _read_rule(read_chosen(folder), classes, folder / CHOSEN)
    return grade_rows(table, classes, cuts).assign(fold=table["fold"])


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
