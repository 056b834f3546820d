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
    local ones need no network.
    """
    if cfg.data.source.type in KAGGLE_SOURCES:
        return kaggle.download(cfg, paths, force=force)
    return sources.fetch(cfg, paths, force=force)
