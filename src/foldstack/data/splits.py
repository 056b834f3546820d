"""K-fold splits of the train table: stratified by label, grouped, or both.

``folds.strategy``:

* ``stratified``: every fold gets its share of every class. Single-label: sklearn's
  ``StratifiedKFold`` on the whole label. Multilabel: iterative stratification (Sechidis et al.
  2011, the ``iterative-stratification`` package's ``MultilabelStratifiedKFold``), which balances
  every label's positives at once, rarest label first.
* ``grouped``: sklearn's ``GroupKFold`` on ``folds.group_column``: no group spans two folds.
* ``stratified_grouped``: sklearn's ``StratifiedGroupKFold``: no group spans two folds, and the
  folds are as balanced in the stratum as the groups allow (a rare positive class, as in
  siim-isic's melanoma by patient, is spread instead of piling up in a few folds). The stratum
  is the label; for multilabel the rarest of the row's labels (its least frequent class over the
  whole table), or no label, so the rare labels are the ones kept apart.

A regression (``task: regression``) has no classes: ``stratified`` and ``stratified_grouped``
balance its target's quantile bins instead (:func:`target_bins`), so each fold spans the
target's whole range.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold, StratifiedKFold

from foldstack.core.config import PipelineConfig
from foldstack.core.errors import DataError, FoldstackError
from foldstack.core.paths import Paths
from foldstack.data import tables
from foldstack.data.labels import Classes, every_label, flat_labels, split_labels

log = logging.getLogger(__name__)

#: The strategies that read ``folds.group_column``.
GROUPED = ("grouped", "stratified_grouped")

#: The stratum of a multilabel row with no label at all.
NO_LABEL = ""


def make_folds(table: pd.DataFrame, k: int, seed: int, task: str, strategy: str = "stratified",
               groups: pd.Series | None = None) -> pd.Series:
    """The fold of each row (see the module's docstring for each ``strategy``).

    A single-label task's every validation fold must hold every class: a fold without one
    cannot be scored by a metric that needs both sides of it (binary ROC AUC is undefined on one
    class, and its fold would end without a checkpoint), nor does it test that class at all.

    Raises:
        DataError: a class (single-label, see :func:`rare_classes`; in fewer groups, where folds
            are grouped) or, grouped, the number of groups is smaller than the number of folds, so
            some fold would never see it; or the split leaves a fold's validation rows without a
            class (:func:`folds_missing_a_class`), naming the fold and the class.
    """
    if strategy in GROUPED:
        if len(groups) != len(table):  # read row for row from the train table: it must be this table
            raise DataError(f"folds.group_column: {len(groups)} row(s) of groups for {len(table)} training images; "
                            "the groups are read row for row from data.train_csv")
        if groups.nunique() < k:  # sklearn's own ValueError would be a traceback
            raise DataError(f"folds.group_column: {groups.nunique()} group(s), fewer than the {k} folds "
                            "(folds.k); lower folds.k")
    if task == "regression":
        return _regression_folds(table, k, seed, strategy, groups)
    rare = rare_classes(table["label"], k, task, groups if strategy in GROUPED else None)
    if rare:
        raise DataError(rare[0])
    if task == "multilabel" and strategy != "grouped":
        _warn_sparse_labels(table["label"], k)
    if strategy == "grouped":
        splits = GroupKFold(n_splits=k, shuffle=True, random_state=seed).split(table, groups=groups)
    elif strategy == "stratified_grouped":
        splitter = StratifiedGroupKFold(n_splits=k)
        splits = splitter.split(table, strata(table["label"], task), groups=_shuffled_groups(groups, seed))
    elif task == "multilabel":
        matrix = Classes.from_labels(table["label"], task).encode(table["label"])
        splits = _multilabel_kfold(k, seed).split(table, matrix)
    else:
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(table, table["label"])
    fold = _numbered(table, splits)
    missing = folds_missing_a_class(table["label"], fold, k, task)
    if missing:
        raise DataError(missing[0])
    return fold


#: The most quantile bins a regression's target is stratified on.
MAX_BINS = 10


def target_bins(labels: pd.Series, k: int) -> np.ndarray:
    """A regression target's quantile bin per row: as many bins as leave at least two rows per
    fold in each (at most :data:`MAX_BINS`), equal values in one bin."""
    values = pd.to_numeric(labels, errors="raise").to_numpy(np.float64)
    n_bins = int(np.clip(len(values) // (2 * k), 1, MAX_BINS))
    return pd.qcut(values, n_bins, labels=False, duplicates="drop").astype(int)


def _regression_folds(table: pd.DataFrame, k: int, seed: int, strategy: str,
                      groups: pd.Series | None) -> pd.Series:
    """A regression's folds: stratified on the target's quantile bins (:func:`target_bins`)."""
    bins = target_bins(table["label"], k)
    if strategy == "grouped":
        splits = GroupKFold(n_splits=k, shuffle=True, random_state=seed).split(table, groups=groups)
    elif strategy == "stratified_grouped":
        splits = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(table, bins, groups=groups)
    else:
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(table, bins)
    return _numbered(table, splits)


def _numbered(table: pd.DataFrame, splits) -> pd.Series:
    """Each row's fold: the number of the split whose validation rows hold it."""
    fold = pd.Series(-1, index=table.index, name="fold")
    for number, (_, valid) in enumerate(splits):
        fold.iloc[valid] = number
    return fold


def folds_missing_a_class(labels: pd.Series, fold: pd.Series, k: int, task: str) -> list[str]:
    """One message per (fold, class) of a single-label task whose validation rows hold none of
    the class (none for multilabel: see :func:`rare_classes`)."""
    if task == "multilabel":
        return []
    held = pd.crosstab(fold, labels).reindex(range(k), fill_value=0)
    return [f"fold {number}: its validation rows hold no class {name!r} ({int(held[name].sum())} example(s) in "
            f"all), so its score is undefined or blind to it; lower folds.k or change folds.seed"
            for number in held.index for name in held.columns if held.loc[number, name] == 0]


def _shuffled_groups(groups: pd.Series, seed: int) -> np.ndarray:
    """The groups renamed ``0..n-1`` in a seeded random order, for ``StratifiedGroupKFold``
    without its own ``shuffle``, which scrambles the stratification before scikit-learn 1.8
    (scikit-learn#32478; a Kaggle image holds 1.6.1). The order is the fixed version's (1.8's
    ``shuffle=True, random_state=seed``): the same folds on every version."""
    _, index = np.unique(np.asarray(groups), return_inverse=True)
    order = np.arange(index.max() + 1)
    np.random.RandomState(seed).shuffle(order)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[index]


def _multilabel_kfold(k: int, seed: int):
    """Iterative stratification's splitter. Imported here, not at the top: a Kaggle image lacks the
    package, and every foldstack command imports this module."""
    try:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
    except ImportError:
        raise FoldstackError("multilabel stratified folds need the package iterative-stratification "
                             "(pip install iterative-stratification, or `make setup`)") from None
    return MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)


def strata(labels: pd.Series, task: str) -> pd.Series:
    """What ``stratified_grouped`` folds balance: the whole label ("Common wheat" is one class),
    or for multilabel each row's rarest label (:data:`NO_LABEL` for a row without one)."""
    if task != "multilabel":
        return labels
    tokens = split_labels(labels)
    counts = flat_labels(tokens).value_counts()
    # Ties between equally rare labels go to the name, so the stratum does not hang on row order.
    return tokens.map(lambda row: min(row, key=lambda name: (counts[name], name)) if row else NO_LABEL)


def rare_classes(labels: pd.Series, k: int, task: str, groups: pd.Series | None = None) -> list[str]:
    """One message per class with fewer examples than folds: stratified folds cannot put one in
    each fold. With ``groups`` (grouped folds: a group never spans two folds) a class counts the
    groups it is in, not its rows: 6 melanomas of 3 patients reach 3 folds at most.

    Multilabel folds refuse none (a warning names them): a label rarer than the folds (imet has
    hundreds) simply misses some folds, and the metrics allow for it (a column undefined in a
    fold is left out of that fold's column AUC).
    """
    if task in ("multilabel", "regression"):  # a regression's folds balance its target's bins
        return []
    if groups is not None:
        counts = pd.Series(groups.to_numpy()).groupby(labels.to_numpy()).nunique()
        return [f"class {name!r} is in {count} group(s) (folds.group_column), fewer than the {k} folds "
                "(folds.k); grouped folds cannot put it in each fold: lower folds.k"
                for name, count in counts[counts < k].items()]
    counts = labels.value_counts()
    return [f"class {name!r} has {count} example(s), fewer than the {k} folds (folds.k); merge rare "
            "classes or lower folds.k" for name, count in counts[counts < k].items()]


def _warn_sparse_labels(labels: pd.Series, k: int) -> None:
    counts = every_label(labels, multilabel=True).value_counts()
    sparse = counts[counts < k]
    if len(sparse):
        log.warning("folds: %d label(s) have fewer positives than the %d folds (e.g. %r: %d); some folds hold none "
                    "of them", len(sparse), k, sparse.index[0], sparse.iloc[0])


def read_groups(cfg: PipelineConfig, paths: Paths) -> pd.Series | None:
    """The train table's ``folds.group_column``, row for row; None unless folds are grouped.

    Raises:
        DataError: the column is missing (one line naming the file and the column) or a row's
            group is empty.
    """
    if cfg.folds.strategy not in GROUPED:
        return None
    source = paths.data / cfg.data.train_csv
    frame = tables.read_csv(source, "train table")
    column = cfg.folds.group_column
    if column not in frame.columns:
        raise DataError(f"{source}: no group column {column!r} (folds.group_column); columns are "
                        f"{', '.join(repr(c) for c in frame.columns)}")
    groups = frame[column].str.strip()
    empty = np.flatnonzero(groups.isin(tables.EMPTY_LABELS).to_numpy())
    if len(empty):
        raise DataError(f"{source}: row {empty[0] + 2} has an empty {column!r} (folds.group_column)")
    return groups
