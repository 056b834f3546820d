"""Shared fixtures: a tiny digits competition on disk and configs built from dicts."""

from __future__ import annotations

import contextlib
import copy
import io
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
#: The suite runs three workers on two cores, each starting TensorFlow processes of its own: one
#: thread per TensorFlow (and OpenMP) pool, so that no pool spins waiting for a core another
#: worker holds, and TensorFlow's own kernels instead of oneDNN's, which are compiled afresh in
#: every process (tiny networks, hundreds of processes). Measured on test_competitions.py's 12
#: end-to-end runs, `pytest -n 3 --dist load`: 75-80 s as TensorFlow starts by default, 71-72 s
#: with one thread per pool, 65 s with oneDNN off too. Every subprocess inherits them; a variable
#: already set wins. The image caches' builds take one thread too (FOLDSTACK_BUILD_THREADS; the
#: threaded build has its own test, which sets the count it needs).
for _name, _value in (("TF_NUM_INTRAOP_THREADS", "1"), ("TF_NUM_INTEROP_THREADS", "1"), ("OMP_NUM_THREADS", "1"),
                      ("TF_ENABLE_ONEDNN_OPTS", "0"), ("FOLDSTACK_BUILD_THREADS", "1")):
    os.environ.setdefault(_name, _value)

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from sklearn.datasets import load_digits

from foldstack import cli
from foldstack.core.config import PipelineConfig
from foldstack.core.paths import Paths
from foldstack.pipeline import parse_pipeline
from foldstack.stages import download, folds, predict, stack, train

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


#: The modules that take longest, longest first (ranked by the summed setup and call seconds of
#: `pytest -n 3 --durations=0`, 2026-12-07). `make test` hands whole modules to its workers in this
#: order (``--dist loadscope --no-loadscope-reorder``), then the others in file order: each module's
#: fixtures are built once, and the workers end together instead of one finishing a long module alone.
LONGEST_FIRST = ("test_executors", "test_init", "test_competitions", "test_train", "test_offline_install",
                 "test_make", "test_backbones", "test_kernel_offline", "test_hub", "test_backends", "test_phases",
                 "test_averaging", "test_rounds", "test_arrays", "test_meta", "test_bundle", "test_recipes", "test_predict", "test_regression",
                 "test_knobs", "test_efficientnet_lite", "test_ordinal", "test_stack", "test_stack_features")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first (:data:`LONGEST_FIRST`), each module's tests still together."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__, len(rank)))


def small_cnn_pipeline(name: str, task: str, metric: str, data: dict, **more) -> dict:
    """A pipeline on a local folder (its ``data.source`` path set later) that trains small_cnn at
    16 px for one epoch on two folds: an end-to-end run of a task's whole path in seconds."""
    return {
        "name": name, "task": task, "metric": metric, "seed": 0,
        "data": {"source": {"type": "local", "path": "/nowhere"}, **data, "solution": "solution.csv"},
        "folds": {"k": 2, "seed": 0},
        "models": [{"name": "cnn", "backbone": "small_cnn", "weights": "none", "image_size": 16,
                    "regime": "scratch", "epochs": 1, "batch_size": 16, "lr": 0.003}],
        "stack": {"lightgbm": {"num_threads": 1, "num_iterations": 50}},
        **more,
    }


def write_digits(folder: Path, ids: list[str], below: int, n_train: int, dirs: tuple[str, str]) -> np.ndarray:
    """The first ``len(ids)`` digits under ``below`` as grey PNGs named by ``ids``: the first
    ``n_train`` in ``folder / dirs[0]``, the others in ``folder / dirs[1]``; returns their digits."""
    digits = load_digits()
    keep = np.flatnonzero(digits.target < below)[: len(ids)]
    for split in dirs:
        (folder / split).mkdir(parents=True)
    for n, (i, image_id) in enumerate(zip(keep, ids)):
        image = np.rint(digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
        Image.fromarray(image, mode="L").save(folder / dirs[n >= n_train] / f"{image_id}.png")
    return digits.target[keep]


def run_to_stack(raw: dict, root: Path) -> tuple[PipelineConfig, Paths, pd.DataFrame, str]:
    """The pipeline ``raw`` (its YAML written to ``root``) downloaded, folded, trained, predicted
    and stacked: its config, its paths, the leaderboard and what the stack stage printed."""
    (root / f"{raw['name']}.yaml").write_text(yaml.safe_dump(raw))
    cfg = parse_pipeline(raw)
    paths = Paths.for_pipeline(raw["name"], root)
    download.run(cfg, paths)
    folds.run(cfg, paths)
    train.run(cfg, paths, workers=1)
    predict.run(cfg, paths, workers=1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        board = stack.run(cfg, paths)
    return cfg, paths, board, printed.getvalue()


def predict_images(paths: Paths, images: str, out: Path, *flags: str) -> pd.DataFrame:
    """``foldstack predict --images`` (with ``flags``) of ``paths.data / images`` by the pipeline
    :func:`run_to_stack` wrote to ``paths.root``: the CSV it wrote to ``out``."""
    code = cli.main(["predict", "--pipeline", str(paths.root / f"{paths.pipeline}.yaml"), "--root",
                     str(paths.root), "--images", str(paths.data / images), "--out", str(out), *flags])
    assert code == 0
    return pd.read_csv(out)


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
