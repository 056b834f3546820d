"""Issue #13 item 7, end to end and offline: train a tiny pipeline, bundle it, install the bundle
with the network blocked into a fresh environment shaped like a Kaggle image (tests/kaggle_image.py),
run the kernel's own script on a new test set (new ids, new images) mounted where a kernel mounts
it, and compare its submission and probabilities with the training machine's predictions for the
same images.

It needs the `predict` stage (issue #13 items 1-3); until that is merged it fails, saying so.
About 90 s on two cores (two trainings of a 16 px CNN, one epoch per fold; nine stage processes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from kaggle_image import make_image, offline_env
from PIL import Image

from foldstack import cli
from foldstack.data.sources import write_digits

SLUG = "tiny-digits"
PIPELINE = {
    "name": "tiny", "task": "multiclass", "metric": "accuracy",
    "data": {"source": {"type": "kaggle_competition", "competition": SLUG}},
    "folds": {"k": 2, "seed": 0},
    "augment": {"tta": [[], [{"__class_fullname__": "HorizontalFlip", "p": 1.0}]]},
    "models": [{"name": "cnn", "backbone": "small_cnn", "weights": "none", "image_size": 16, "regime": "scratch",
                "epochs": 1, "batch_size": 32, "lr": 0.003}],
    "stack": {"candidates": ["mean", "lightgbm"], "force": "lightgbm"},  # a fitted level-two model
}
#: Same machine, same packages: the kernel's probabilities may differ from the training
#: machine's by float32 rounding at most.
TOLERANCE = 1e-5


def has_predict() -> bool:
    parser = cli.build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return "predict" in commands.choices


def competition(folder: Path) -> Path:
    """The tiny digits competition, as a kernel mounts it under ``competitions/<slug>``."""
    data = folder / "competitions" / SLUG
    write_digits(data, limit=150)
    (data / "solution.csv").unlink()  # a hidden test set has no answers
    return data


def new_test_set(original: Path, folder: Path) -> pd.DataFrame:
    """The same competition with another test set: new ids, new images (the old ones transposed)."""
    data = folder / "competitions" / SLUG
    shutil.copytree(original, data, ignore=shutil.ignore_patterns("test", "sample_submission.csv"))
    (data / "test").mkdir()
    old_ids = pd.read_csv(original / "sample_submission.csv")["id"]
    new_ids = [f"hidden_{i:03d}" for i in range(len(old_ids))]
    for old, new in zip(old_ids, new_ids):
        Image.open(original / "test" / f"{old}.png").transpose(Image.Transpose.TRANSPOSE).save(data / "test" / f"{new}.png")
    sample = pd.DataFrame({"id": new_ids[::-1], "label": 0})  # another order too
    sample.to_csv(data / "sample_submission.csv", index=False)
    return sample


def foldstack(*args: str, env: dict) -> str:
    done = subprocess.run([sys.executable, "-m", "foldstack.cli", *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"foldstack {args[0]}: {done.stderr[-3000:]}"
    return done.stdout


def probabilities(root: Path) -> pd.DataFrame:
    return pd.read_parquet(root / "artifacts" / "tiny" / "stack" / "test.parquet").set_index("id").sort_index()


@pytest.mark.slow
def test_kernel_predicts_a_new_test_set_offline_as_the_training_machine_does(tmp_path: Path) -> None:
    assert has_predict(), ("foldstack has no `predict` subcommand yet: this test needs issue #13 items 1-3 "
                           "(branch predict) merged")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(PIPELINE))
    original = competition(tmp_path / "input-original")
    new_input = tmp_path / "input-new"
    sample = new_test_set(original, new_input)

    # The training machine: train on the original competition, stack, bundle.
    trained = tmp_path / "trained"
    kernel_like = {**os.environ, "KAGGLE_KERNEL_RUN_TYPE": "Batch", "PYTHONUNBUFFERED": "1"}
    train_env = {**kernel_like, "FOLDSTACK_KAGGLE_INPUT": str(tmp_path / "input-original"),
                 "FOLDSTACK_KAGGLE_WORKING": str(trained)}
    common = ["--pipeline", str(tmp_path / "tiny.yaml"), "--root", str(trained)]
    (tmp_path / "no-requirements.txt").write_text("")  # the image has every requirement; no network here
    for stage in ("folds", "train", "predict", "stack", "bundle"):
        extra = ("--requirements", str(tmp_path / "no-requirements.txt")) if stage == "bundle" else ()
        foldstack(stage, *common, *extra, env=train_env)
    bundle = trained / "bundle" / "tiny"
    done_files = {path: path.read_bytes() for path in (trained / "artifacts" / "tiny" / "models").rglob("done.json")}

    # The kernel: the new test set and the bundle mounted, the kernel's script run offline in a fresh image.
    dataset = json.loads((bundle / "dataset-metadata.json").read_text())["id"]
    shutil.copytree(bundle, new_input / "datasets" / dataset)
    image = make_image(tmp_path / "image")
    working = tmp_path / "working"
    working.mkdir()
    env = offline_env(image, KAGGLE_KERNEL_RUN_TYPE="Batch", FOLDSTACK_KAGGLE_INPUT=str(new_input),
                      FOLDSTACK_KAGGLE_WORKING=str(working), KERAS_HOME=str(tmp_path / "keras"),
                      FOLDSTACK_CACHE=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    run = subprocess.run([str(image), str(trained / "kernel" / "tiny" / "foldstack_kernel.py")], cwd=working,
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "fold 0:" not in run.stdout and "fold 1:" not in run.stdout  # no fold trained in the kernel

    submission = pd.read_csv(working / "submission.csv", dtype=str)
    assert list(submission.columns) == ["id", "label"] and submission["id"].tolist() == sample["id"].tolist()
    assert set(submission["label"]) <= {str(d) for d in range(10)}

    # The training machine predicts the same new images with its own installation.
    check_env = {**train_env, "FOLDSTACK_KAGGLE_INPUT": str(new_input)}
    for stage in ("predict", "stack"):
        foldstack(stage, *common, env=check_env)
    expected, got = probabilities(trained), probabilities(working)
    assert got.index.tolist() == sorted(sample["id"]) and list(got.columns) == list(expected.columns)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=0, atol=TOLERANCE)
    labels = expected.idxmax(axis=1).reindex(submission["id"])
    assert submission["label"].tolist() == labels.tolist()
    # Training never ran again, here or there.
    assert {path: path.read_bytes() for path in done_files} == done_files
