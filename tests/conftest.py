"""Shared fixtures: a tiny digits competition on disk and configs built from dicts."""

from __future__ import annotations

import copy
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from foldstack.core.config import PipelineConfig
from foldstack.core.paths import Paths
from foldstack.pipeline import parse_pipeline
from foldstack.stages import download, folds

TINY = {
    "name": "tiny",
    "task": "multiclass",
    "metric": "accuracy",
    "data": {"source": {"type": "embedded", "dataset": "digits", "limit": 150},
             "solution": "solution.csv"},
    "folds": {"k": 2, "seed": 0},
    "models": [{"name": "m", "backbone": "mobilenet_v2", "weights": "none", "image_size": 32,
                "regime": "scratch", "epochs": 1, "batch_size": 32}],
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with a ``slow`` test (a minute or so of end-to-end work) first, each module's tests
    still together (its module-scoped fixture is built once): two workers then finish together
    instead of one running a long test alone at the end."""
    slow = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow)


def make_config(**overrides) -> PipelineConfig:
    """The tiny pipeline with top-level keys replaced."""
    raw = copy.deepcopy(TINY)
    raw.update(overrides)
    return parse_pipeline(raw)


@pytest.fixture
def tiny_paths(tmp_path: Path) -> Paths:
    return Paths.for_pipeline("tiny", tmp_path)


@pytest.fixture(scope="session")
def tiny_digits(tmp_path_factory) -> tuple[PipelineConfig, Paths]:
    """A downloaded tiny digits competition with its folds, shared by the read-only tests."""
    cfg = make_config()
    paths = Paths.for_pipeline("tiny", tmp_path_factory.mktemp("tiny"))
    download.run(cfg, paths)
    folds.run(cfg, paths)
    return cfg, paths
