"""The `folds` stage: split the train table into K folds, the same way on every run."""

from __future__ import annotations

import logging

import pandas as pd

from foldstack import data
from foldstack.config import PipelineConfig
from foldstack.errors import DataError
from foldstack.io import write_csv
from foldstack.paths import Paths
from foldstack.preview import augmentation_preview

log = logging.getLogger(__name__)


def make_folds(table: pd.DataFrame, k: int, seed: int, strategy: str = "stratified",
               groups: pd.Series | None = None) -> pd.Series:
    """The fold of each row: stratified by label (the first label for multilabel), or grouped.

    Raises:
        DataError: a class (or, grouped, the number of groups) is smaller than the number of
            folds, so some fold would never see it.
    """
    # Imported here: scikit-learn takes a second to import, and `check` only needs rare_classes.
    from sklearn.model_selection import GroupKFold, StratifiedKFold

    if strategy == "grouped":
        if groups.nunique() < k:  # GroupKFold's own ValueError would be a traceback
            raise DataError(f"folds.group_column: {groups.nunique()} group(s), fewer than the {k} folds "
                            "(folds.k); lower folds.k")
        splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(table, groups=groups)
    else:
        strata = _strata(table["label"])
        rare = rare_classes(table["label"], k)
        if rare:
            raise DataError(rare[0])
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(table, strata)
    fold = pd.Series(-1, index=table.index, name="fold")
    for number, (_, valid) in enumerate(splits):
        fold.iloc[valid] = number
    return fold


def rare_classes(labels: pd.Series, k: int) -> list[str]:
    """One message per class (the first label, for multilabel) with fewer examples than folds:
    stratified folds cannot put one in each fold."""
    counts = _strata(labels).value_counts()
    return [f"class {name!r} has {count} example(s), fewer than the {k} folds (folds.k); merge rare "
            "classes or lower folds.k" for name, count in counts[counts < k].items()]


def _strata(labels: pd.Series) -> pd.Series:
    return labels.str.split().str[0]


def read_groups(cfg: PipelineConfig, paths: Paths) -> pd.Series | None:
    """The train table's ``folds.group_column``, row for row; None unless folds are grouped."""
    if cfg.folds.strategy != "grouped":
        return None
    source = paths.data / cfg.data.train_csv
    frame = data.read_csv(source, "train table")
    data.require_columns(frame, [cfg.folds.group_column], source)
    return frame[cfg.folds.group_column]


def run(cfg: PipelineConfig, paths: Paths) -> pd.DataFrame:
    """Write ``folds.csv`` (``id, label, fold``) and a preview of the training augmentation."""
    table = data.load_train_table(cfg, paths)
    table["fold"] = make_folds(table, cfg.folds.k, cfg.folds.seed, cfg.folds.strategy, read_groups(cfg, paths))
    folds = table[["id", "label", "fold"]]
    write_csv(paths.folds, folds)
    sizes = folds["fold"].value_counts().sort_index()
    log.info("folds: %d images, %d classes, fold sizes %s -> %s", len(folds), folds["label"].nunique(),
             sizes.tolist(), paths.folds)
    preview = augmentation_preview(cfg, table, paths.artifacts / "augmentation.png", seed=cfg.seed)
    log.info("augmentation preview -> %s", preview)
    return folds
