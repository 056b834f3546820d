"""The `download` stage: the competition's files under ``data/<pipeline>/`` as it ships them."""

from __future__ import annotations

from pathlib import Path

from foldstack.core.config import PipelineConfig
from foldstack.core.paths import Paths
from foldstack.data import kaggle, sources

KAGGLE_SOURCES = ("kaggle_competition", "kaggle_dataset")


def run(cfg: PipelineConfig, paths: Paths, force: bool = False) -> Path:
    """Fetch the pipeline's data (nothing when it is up to date, unless ``force``); returns its folder.

    Kaggle sources go through the Kaggle client (or the kernel's mounted input); embedded and
    local ones need no network. Each ``data.extra`` dataset from Kaggle is fetched the same way,
    into its own folder (``Paths.extra_data``).
    """
    if cfg.data.source.type in KAGGLE_SOURCES:
        folder = kaggle.download(cfg, paths, force=force)
    else:
        folder = sources.fetch(cfg, paths, force=force)
    for index, extra in enumerate(cfg.data.extra):  # a local one is read where it lies
        if extra.source.type in KAGGLE_SOURCES:
            kaggle.download_extra(cfg, paths, index, force=force)
    return folder
