"""The `folds` stage: split the train table into K folds, the same way on every run."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from foldstack.contracts import folds_file
from foldstack.core.config import PipelineConfig
from foldstack.core.paths import Paths
from foldstack.data import splits, tables
from foldstack.plots.augmentation import augmentation_preview

log = logging.getLogger(__name__)


def run(cfg: PipelineConfig, paths: Paths) -> pd.DataFrame:
    """Write ``folds.csv`` (``id, label, fold``), the class order beside it (``classes.json``,
    derived here once: every later stage reads it), the external rows (``extra.csv``, from
    ``data.extra``: in no fold, they train in every one) and a preview of the training augmentation."""
    table, source = tables.load_train_table(cfg, paths), tables.train_source(cfg, paths)
    classes = tables.classes(cfg, paths, table.set_index("id")["label"], source)
    table["fold"] = splits.make_folds(table, cfg.folds.k, cfg.folds.seed, cfg.task, cfg.folds.strategy,
                                      splits.read_groups(cfg, paths))
    folds_file.write(paths.folds, table, classes, cfg.task)
    extra = tables.load_extra_table(cfg, paths, classes)
    folds_file.write_extra(paths.folds, extra.assign(bytes=[Path(path).stat().st_size for path in extra["path"]]))
    if len(extra):
        log.info("external data: %d images from %d dataset(s) train in every fold -> %s", len(extra),
                 len(cfg.data.extra), folds_file.extra_path(paths.folds))
    sizes = table["fold"].value_counts().sort_index()
    log.info("folds: %d images, %d classes, fold sizes %s -> %s", len(table), len(classes),
             sizes.tolist(), paths.folds)
    preview = augmentation_preview(cfg, table, paths.artifacts / "augmentation.png", seed=cfg.seed)
    log.info("augmentation preview -> %s", preview)
    return table[folds_file.COLUMNS]
