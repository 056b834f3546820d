"""K-fold splits of the train table: stratified by label, or grouped."""

from __future__ import annotations

import pandas as pd
from sklearn.model_selection import GroupKFold, StratifiedKFold

from foldstack.core.config import PipelineConfig
from foldstack.core.errors import DataError
from foldstack.core.paths import Paths
from foldstack.data import tables


def make_folds(table: pd.DataFrame, k: int, seed: int, task: str, strategy: str = "stratified",
               groups: pd.Series | None = None) -> pd.Series:
    """The fold of each row: stratified by label (see :func:`strata`), or grouped.

    Raises:
        DataError: a class (or, grouped, the number of groups) is smaller than the number of
            folds, so some fold would never see it.
    """
    if strategy == "grouped":
        if groups.nunique() < k:  # GroupKFold's own ValueError would be a traceback
            raise DataError(f"folds.group_column: {groups.nunique()} group(s), fewer than the {k} folds "
                            "(folds.k); lower folds.k")
        splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(table, groups=groups)
    else:
        rare = rare_classes(table["label"], k, task)
        if rare:
            raise DataError(rare[0])
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(table, strata(table["label"], task))
    fold = pd.Series(-1, index=table.index, name="fold")
    for number, (_, valid) in enumerate(splits):
        fold.iloc[valid] = number
    return fold


def strata(labels: pd.Series, task: str) -> pd.Series:
    """What stratified folds balance: the whole label ("Common wheat" is one class), or for
    multilabel the first of a row's space-separated labels."""
    return labels.str.split().str[0] if task == "multilabel" else labels


def rare_classes(labels: pd.Series, k: int, task: str) -> list[str]:
    """One message per stratum with fewer examples than folds: stratified folds cannot put one
    in each fold."""
    counts = strata(labels, task).value_counts()
    return [f"class {name!r} has {count} example(s), fewer than the {k} folds (folds.k); merge rare "
            "classes or lower folds.k" for name, count in counts[counts < k].items()]


def read_groups(cfg: PipelineConfig, paths: Paths) -> pd.Series | None:
    """The train table's ``folds.group_column``, row for row; None unless folds are grouped."""
    if cfg.folds.strategy != "grouped":
        return None
    source = paths.data / cfg.data.train_csv
    frame = tables.read_csv(source, "train table")
    tables.require_columns(frame, [cfg.folds.group_column], source)
    return frame[cfg.folds.group_column]
