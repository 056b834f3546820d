"""Issue #13 item 7 and issue #22 items 3-5, end to end with no route out: train a tiny pipeline
(an EfficientNet-Lite0 head on the backbone's ImageNet features), bundle it, install the
bundle into a fresh environment of the Kaggle image's published versions (tests/kaggle_image.py:
Keras 3.13.2, TensorFlow 2.20, pandas 2.2, scikit-learn 1.6.1, lightgbm 4.6, no
iterative-stratification), run the kernel's own script in a network namespace with no route out on
a new, zipped test set (new ids, new images) mounted where a kernel mounts it, and compare its
submission and probabilities with the training machine's predictions for the same images.

The bundle ships two pins the image holds at another version (this machine's scikit-learn and
LightGBM: the level-two model is a LightGBM pickle, read back only by the version that wrote it) and
Lite0's converted ImageNet weights (the features regime's backbone reads them in the kernel; the
image lacks the package they are converted from).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from kaggle_image import make_image, offline, offline_env
from PIL import Image

from foldstack import cli
from foldstack.data.sources import write_digits

SLUG = "tiny-digits"
PIPELINE = {
    "name": "tiny", "task": "multiclass", "metric": "accuracy",
    "data": {"source": {"type": "kaggle_competition", "competition": SLUG}},
    "folds": {"k": 2, "seed": 0},
    "augment": {"tta": [[], [{"__class_fullname__": "HorizontalFlip", "p": 1.0}]]},
    "models": [{"name": "lite0", "backbone": "efficientnet_lite0", "weights": "imagenet", "image_size": 32,
                "regime": "features", "epochs": 2, "batch_size": 32, "lr": 0.01}],
    "stack": {"candidates": ["mean", "lightgbm"], "force": "lightgbm"},  # a fitted level-two model
}
#: The kernel runs the image's Keras and TensorFlow, the training machine its own: float32 rounding
#: of the same network apart, the probabilities agree.
TOLERANCE = 1e-5
#: Shipped in the bundle at this machine's versions: the image holds others (tests/kaggle-image.txt).
SHIPPED = ("scikit-learn", "lightgbm")


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
    """The same competition with another test set: new ids, new images (the old ones transposed),
    shipped as a competition ships them, zipped: ``test.zip`` holding ``test/<id>.png``."""
    data = folder / "competitions" / SLUG
    shutil.copytree(original, data, ignore=shutil.ignore_patterns("test", "sample_submission.csv"))
    old_ids = pd.read_csv(original / "sample_submission.csv")["id"]
    new_ids = [f"hidden_{i:03d}" for i in range(len(old_ids))]
    with zipfile.ZipFile(data / "test.zip", "w") as archive:
        for old, new in zip(old_ids, new_ids):
            png = folder / f"{new}.png"
            Image.open(original / "test" / f"{old}.png").transpose(Image.Transpose.TRANSPOSE).save(png)
            archive.write(png, f"test/{new}.png")
            png.unlink()
    sample = pd.DataFrame({"id": new_ids[::-1], "label": 0})  # another order too
    sample.to_csv(data / "sample_submission.csv", index=False)
    return sample


def foldstack(*args: str, env: dict) -> str:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "foldstack.cli", *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"foldstack {args[0]}: {done.stderr[-3000:]}"
    print(f"foldstack {args[0]}: {time.perf_counter() - started:.0f} s")
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
    new_input_mount = new_input / "competitions" / SLUG

    # The training machine: train on the original competition; predict and stack the new test set
    # (what the kernel must reproduce); bundle.
    trained = tmp_path / "trained"
    kernel_like = {**os.environ, "KAGGLE_KERNEL_RUN_TYPE": "Batch", "PYTHONUNBUFFERED": "1",
                   "FOLDSTACK_KAGGLE_WORKING": str(trained), "FOLDSTACK_SCRATCH": str(tmp_path / "train-scratch")}
    common = ["--pipeline", str(tmp_path / "tiny.yaml"), "--root", str(trained)]
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("".join(f"{name}=={metadata.version(name)}\n" for name in SHIPPED))
    python = f"{sys.version_info.major}.{sys.version_info.minor}"  # the image's interpreter is this one
    for stage, mounted in (("folds", original), ("train", original), ("download", new_input_mount),
                           ("predict", new_input_mount), ("stack", new_input_mount), ("bundle", new_input_mount)):
        extra = ("--requirements", str(requirements), "--python", python) if stage == "bundle" else ()
        foldstack(stage, *common, *extra, env={**kernel_like, "FOLDSTACK_KAGGLE_INPUT": str(mounted.parents[1])})
    expected = probabilities(trained)
    bundle = trained / "bundle" / "tiny"
    record = json.loads((bundle / "foldstack-bundle.json").read_text())
    assert record["weights"]["foldstack"] == ["efficientnet_lite0.weights.h5"]  # the real ImageNet file
    assert list(record["seconds_per_image"]) == ["lite0"] and record["seconds_per_image"]["lite0"] > 0
    done_files = {path: path.read_bytes() for path in (trained / "artifacts" / "tiny" / "models").rglob("done.json")}

    # The kernel: the new test set and the bundle mounted, the kernel's script run in a fresh image, no route out.
    dataset = json.loads((bundle / "dataset-metadata.json").read_text())["id"]
    shutil.copytree(bundle, new_input / "datasets" / dataset)
    image = make_image(tmp_path / "image")
    versions = [image, "-c", f"import importlib.metadata as m; print(*(m.version(n) for n in {SHIPPED!r}))"]
    have = subprocess.run(versions, capture_output=True, text=True, env=offline_env(image)).stdout.split()
    assert all(a != b for a, b in zip(have, [metadata.version(name) for name in SHIPPED], strict=True))  # the image's own
    working, scratch = tmp_path / "working", tmp_path / "scratch"
    working.mkdir()
    env = offline_env(image, KAGGLE_KERNEL_RUN_TYPE="Batch", FOLDSTACK_KAGGLE_INPUT=str(new_input),
                      FOLDSTACK_KAGGLE_WORKING=str(working), KERAS_HOME=str(tmp_path / "keras"),
                      FOLDSTACK_CACHE=str(tmp_path / "cache"), FOLDSTACK_SCRATCH=str(scratch), PYTHONUNBUFFERED="1")
    started = time.perf_counter()
    run = subprocess.run(offline([image, trained / "kernel" / "tiny" / "foldstack_kernel.py"]), cwd=working,
                         env=env, capture_output=True, text=True)
    print(f"kernel: {time.perf_counter() - started:.0f} s")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "fold 0:" not in run.stdout and "fold 1:" not in run.stdout  # no fold trained in the kernel
    projected = next(line for line in run.stdout.splitlines() if line.startswith("kernel: projected"))
    assert re.fullmatch(rf"kernel: projected predict time [0-9.]+ h \([0-9]+ s\) for {len(sample)} test images "
                        r"\(lite0 [0-9.]+ s per image, .*\); limit 9 h", projected), projected
    print(projected)

    # Both shipped pins were installed and read the level-two model; the weight file reached the cache.
    installed = subprocess.run(versions, capture_output=True, text=True, env=env)
    assert installed.stdout.split() == [metadata.version(name) for name in SHIPPED]
    assert (tmp_path / "cache" / "weights" / "efficientnet_lite0.weights.h5").is_file()
    # Scratch holds the unpacked test set, the caches and the artifacts; /kaggle/working the submission.
    assert sorted(path.name for path in working.iterdir()) == ["submission.csv"]
    assert (scratch / "data" / "tiny" / "test" / f"{sample['id'][0]}.png").is_file()

    submission = pd.read_csv(working / "submission.csv", dtype=str)
    assert list(submission.columns) == ["id", "label"] and submission["id"].tolist() == sample["id"].tolist()
    assert set(submission["label"]) <= {str(d) for d in range(10)}

    # The kernel's probabilities are the training machine's for the same new images.
    got = probabilities(scratch)
    assert got.index.tolist() == sorted(sample["id"]) and list(got.columns) == list(expected.columns)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=0, atol=TOLERANCE)
    labels = expected.idxmax(axis=1).reindex(submission["id"])
    assert submission["label"].tolist() == labels.tolist()
    # Training never ran again, here or there.
    assert {path: path.read_bytes() for path in done_files} == done_files
