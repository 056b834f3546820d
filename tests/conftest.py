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


#: The modules that take longest, longest first (ranked by `pytest -n 2 --durations=0` and by the
#: CPU seconds of the tests of a serial run under a cpuacct cgroup, 2026-11-29). `make test` hands whole modules to its
#: two workers in this order (``--dist loadscope --no-loadscope-reorder``), then the others in
#: file order: each module's fixtures are built once, and the two workers end together instead of
#: one finishing a long module alone.
LONGEST_FIRST = ("test_executors", "test_competitions", "test_backbones", "test_hub", "test_make", "test_backends",
                 "test_kernel_offline", "test_predict", "test_train", "test_phases", "test_ordinal", "test_recipes")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first (:data:`LONGEST_FIRST`), each module's tests still together."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__, len(rank)))


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
