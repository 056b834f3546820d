"""End to end: the Makefile on a tiny digits pipeline, then again with nothing to do, then with a
new test set: predicted, stacked and submitted, no fold trained."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from foldstack.data.sources import write_digits

from browser import open_page
from kaggle_image import make_image, offline, offline_env, pins

REPO = Path(__file__).resolve().parents[1]

#: TensorFlow's and absl's start-up lines on a machine without a GPU: never shown without -v.
START_UP = ("failed call to cuInit", "oneDNN custom operations", "All log messages before absl::InitializeLog()",
            "cudart_stub", "cpu_feature_guard")

TINY_PIPELINE = {
    "name": "tiny",
    "task": "multiclass",
    "metric": "accuracy",
    "data": {"source": {"type": "embedded", "dataset": "digits", "limit": 200}, "solution": "solution.csv"},
    "folds": {"k": 2, "seed": 1},
    "augment": {"train": [{"__class_fullname__": "Affine", "rotate": [-10, 10], "p": 0.5}]},
    # At batch size 8 and a learning rate of 0.01 (3 to 4 steps an epoch at 32 they end near chance,
    # OOF accuracy 0.13-0.18: too close to 0.1 for a floor to tell learning from luck).
    "models": [
        {"name": "cnn", "backbone": "small_cnn", "weights": "none", "image_size": 16, "regime": "scratch",
         "epochs": 3, "batch_size": 8, "lr": 0.01},
        {"name": "lite0", "backbone": "efficientnet_lite0", "weights": "imagenet", "image_size": 32,
         "regime": "features", "epochs": 5, "batch_size": 8, "lr": 0.01},
    ],
}

#: The OOF accuracy each model must beat on either backend (chance is 0.1). Measured with folds
#: seeds 1, 2 and 3: cnn 0.781-0.838 (TensorFlow), 0.787-0.869 (JAX); lite0 0.656-0.725
#: (TensorFlow), 0.669-0.700 (JAX).
ACCURACY_FLOOR = {"cnn": 0.5, "lite0": 0.4}


def assert_learnt(root: Path, backend: str) -> None:
    """Every model of the tiny pipeline trained under ``backend`` (its folds' ``done.json`` say so),
    beats its accuracy floor out of fold, and predicted the test set: rows of probabilities."""
    art = root / "artifacts" / "tiny"
    folds = pd.read_csv(art / "folds.csv", dtype={"id": str, "label": str})
    classes = [str(d) for d in range(10)]
    for model, floor in ACCURACY_FLOOR.items():
        ran = {json.loads(done.read_text())["device"]["backend"] for done in (art / "models" / model).glob("fold*/done.json")}
        assert ran == {backend}, f"{model} trained under {ran}"
        oof = pd.read_parquet(art / "oof" / f"{model}.parquet")
        assert oof["id"].tolist() == folds["id"].tolist()
        proba = oof[classes].to_numpy()
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-4)
        accuracy = float(np.mean(np.array(classes)[proba.argmax(axis=1)] == folds["label"].to_numpy()))
        assert accuracy > floor, f"{model} under {backend}: OOF accuracy {accuracy:.3f}, not above {floor}"
        test = pd.read_parquet(art / "test" / f"{model}.parquet")
        np.testing.assert_allclose(test[classes].to_numpy().sum(axis=1), 1.0, rtol=1e-4)


def _make(tmp_path: Path, *targets: str, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    # The test already runs inside the set-up environment: point Make at this interpreter.
    command = ["make", "-C", str(REPO), *flags, *targets, "PIPELINE=tiny", f"CFG={tmp_path / 'tiny.yaml'}",
               f"ROOT={tmp_path}", "SETUP=", f"FOLDSTACK={sys.executable} -m foldstack.cli"]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.slow
def test_make_all_then_nothing_to_do(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_PIPELINE))
    first = _make(tmp_path, "all")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "cnn: CV accuracy" in first.stdout and "lite0: CV accuracy" in first.stdout
    assert "chosen:" in first.stdout and "local LB accuracy" in first.stdout

    art = tmp_path / "artifacts" / "tiny"
    assert_learnt(tmp_path, "tensorflow")  # the default backend (tests/test_backends.py: the same under JAX)
    board = pd.read_csv(art / "stack" / "leaderboard.csv")
    assert {"best_single", "mean", "lightgbm"} <= set(board["candidate"])
    submissions = sorted((tmp_path / "submissions" / "tiny").glob("tiny-*.csv"))
    assert len(submissions) == 1
    sample = pd.read_csv(tmp_path / "data" / "tiny" / "sample_submission.csv", dtype=str)
    written = pd.read_csv(submissions[0], dtype=str)
    assert list(written.columns) == list(sample.columns) and written["id"].tolist() == sample["id"].tolist()
    assert set(written["label"]) <= {str(d) for d in range(10)}

    # Quiet by default: no start-up line of TensorFlow's in any stage, the progress bars stay.
    assert not [line for line in START_UP if line in first.stderr], first.stderr[-3000:]
    assert "train: 100%" in first.stderr
    assert "away from its OOF" not in first.stderr  # Grad-CAM explains the very networks that were trained

    # The report: one page, every picture embedded, read in a real browser at a phone's width.
    report = art / "report.html"
    text = report.read_text()
    for heading in ("Stack leaderboard", "Per class: cnn", "Most confused pairs", "Most confidently wrong",
                    "Grad-CAM: cnn", "Grad-CAM: lite0", "Training curves: lite0", "CV against leaderboard"):
        assert heading in text, heading
    assert submissions[0].name in text and 'src="data:image/png;base64,' in text and 'src="http' not in text
    page = open_page(report, art / "report.png")
    print(f"report screenshot: {art / 'report.png'}")
    assert page["errors"] == []
    assert len(page["images"]) == 9 and all(w > 0 and h > 0 for w, h in page["images"]), page["images"]
    assert page["overflow"] <= 0, "the page is wider than a phone's screen"
    assert (art / "report.png").stat().st_size > 10_000

    # Everything is up to date now: `make -q` says so, and a second run trains nothing.
    assert _make(tmp_path, "all", flags=("-q",)).returncode == 0
    second = _make(tmp_path, "all")
    assert second.returncode == 0 and "foldstack" not in second.stdout, second.stdout

    # A new test set (new ids, new images): predict, stack (applying its saved model) and submit
    # run again; train does not.
    data = tmp_path / "data" / "tiny"
    done = {path: path.stat().st_mtime_ns for path in art.glob("models/*/fold*/done.json")}
    images = sorted((data / "test").glob("*.png"))
    ids = [f"swapped_{i:03d}" for i in range(len(images))]
    for image, new_id in zip(images, ids):
        rotated = Image.open(image).transpose(Image.Transpose.ROTATE_90)
        image.unlink()
        rotated.save(data / "test" / f"{new_id}.png")
    pd.DataFrame({"id": ids, "label": 0}).to_csv(data / "sample_submission.csv", index=False)
    pd.DataFrame({"id": ids, "label": 0}).to_csv(data / "solution.csv", index=False)
    third = _make(tmp_path, "submit")
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert " predict --pipeline" in third.stdout and " train --pipeline" not in third.stdout, third.stdout
    assert "applied the saved" in third.stdout and "Stacking leaderboard" not in third.stdout
    assert {path: path.stat().st_mtime_ns for path in done} == done
    assert sorted(pd.read_parquet(art / "stack" / "test.parquet")["id"]) == ids
    newest = max((tmp_path / "submissions" / "tiny").glob("tiny-*.csv"), key=lambda path: path.stat().st_mtime_ns)
    assert pd.read_csv(newest, dtype=str)["id"].tolist() == ids
    assert _make(tmp_path, "submit", flags=("-q",)).returncode == 0
    assert _make(tmp_path, "all", flags=("-q",)).returncode == 1  # the report is still the old test set's


@pytest.mark.slow
def test_make_all_in_a_kaggle_kernel_of_the_published_image(tmp_path: Path) -> None:
    """Kernel mode (``KAGGLE_KERNEL_RUN_TYPE`` set, /kaggle/input and /kaggle/working relocated), on
    the Kaggle image's published versions (tests/kaggle_image.py), no route out: `make all` sets up,
    trains, predicts, stacks and writes a valid submission; the caches go to scratch."""
    tree = tmp_path / "foldstack"
    tree.mkdir()
    for name in ("Makefile", "pyproject.toml", "README.md"):
        (tree / name).write_bytes((REPO / name).read_bytes())
    subprocess.run(["cp", "-r", str(REPO / "src"), str(tree / "src")], check=True)
    # The image's own versions as the pins: the set-up installs foldstack alone, and every stage runs
    # on the published Keras, pandas, scikit-learn, LightGBM, matplotlib.
    (tree / "requirements.txt").write_text("".join(f"{pin}\n" for pin in pins()))
    data = tmp_path / "input" / "competitions" / "tiny-digits"
    write_digits(data, limit=120)
    pipeline = {"name": "tiny", "task": "multiclass", "metric": "accuracy",
                "data": {"source": {"type": "kaggle_competition", "competition": "tiny-digits"},
                         "solution": "solution.csv"},
                "folds": {"k": 2, "seed": 0},
                "models": [{"name": "cnn", "backbone": "small_cnn", "weights": "none", "image_size": 16,
                            "regime": "scratch", "epochs": 2, "batch_size": 16, "lr": 0.003}],
                "stack": {"candidates": ["mean", "lightgbm"], "force": "lightgbm"}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(pipeline))
    image = make_image(tmp_path / "image")
    working, scratch = tmp_path / "working", tmp_path / "scratch"
    env = offline_env(image, KAGGLE_KERNEL_RUN_TYPE="Interactive", FOLDSTACK_KAGGLE_INPUT=str(tmp_path / "input"),
                      FOLDSTACK_KAGGLE_WORKING=str(working), FOLDSTACK_SCRATCH=str(scratch), PYTHONUNBUFFERED="1",
                      KERAS_HOME=str(tmp_path / "keras"), FOLDSTACK_CACHE=str(tmp_path / "cache"))
    done = subprocess.run(offline(["make", "-C", tree, "all", "PIPELINE=tiny", f"CFG={tmp_path / 'tiny.yaml'}",
                                   f"PYTHON={image}"]), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "kernel set-up: the image holds every pin" in done.stdout

    art = working / "artifacts" / "tiny"
    assert sorted(path.parent.name for path in art.glob("models/cnn/fold*/done.json")) == ["fold0", "fold1"]
    (submission,) = (working / "submissions" / "tiny").glob("tiny-*.csv")
    sample = pd.read_csv(data / "sample_submission.csv", dtype=str)
    written = pd.read_csv(submission, dtype=str)
    assert list(written.columns) == list(sample.columns) and written["id"].tolist() == sample["id"].tolist()
    assert set(written["label"]) <= {str(d) for d in range(10)}
    assert (art / "report.html").is_file()
    # The resized images went to scratch, not to the working disk.
    assert (scratch / "cache" / "tiny" / "16" / "train.npy").is_file()
    assert not [path for path in working.rglob("*.npy")], "a cache under /kaggle/working"
