"""External labelled data (``data.extra``): its rows join the training side of every fold and
never a validation fold, the OOF file or the CV; ``extra.csv`` and the manifest record them; a
changed external dataset trains again; labels outside ``label_map`` are one line."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from foldstack.contracts import folds_file, manifest, predictions
from foldstack.core.config import ConfigError
from foldstack.core.errors import DataError
from foldstack.core.paths import Paths
from foldstack.stages import download, folds, predict, report, stack, submit, train
from foldstack.training.fold_task import FoldTask, JoinedRows
from foldstack.training.regimes import train_batches

from conftest import TINY, make_config

MODEL = {"name": "m", "backbone": "small_cnn", "weights": "none", "image_size": 16, "regime": "features",
         "epochs": 1, "batch_size": 16}


def numbered(n: int, offset: int) -> np.ndarray:
    """``n`` 4x4 images whose pixels hold their row number plus ``offset``."""
    return np.broadcast_to((np.arange(n) + offset)[:, None, None, None], (n, 4, 4, 3)).astype(np.uint8)


def test_every_external_row_trains_in_the_fold_and_no_validation_row_does() -> None:
    cfg = make_config(models=[{**MODEL, "regime": "scratch"}])
    y = np.arange(10) % 2
    extra = JoinedRows(index=np.arange(3), targets=np.array([[1, 0], [0, 1], [0, 1]], np.float32))
    task = FoldTask(model=cfg.models[0], task="binary", metric="accuracy", y=y, n_classes=2,
                    train_index=np.arange(5), valid_index=np.arange(5, 10), augment=cfg.augment, caches={},
                    fold_dir=Path("."), seed=0, extra=extra)
    batches = train_batches(task, {"train": numbered(10, 0), "extra": numbered(3, 100)})
    seen = {}
    for b in range(len(batches)):
        images, targets = batches[b]
        seen.update({int(image[0, 0, 0]): tuple(target) for image, target in zip(images, targets)})
    assert sorted(seen) == [0, 1, 2, 3, 4, 100, 101, 102]  # never 5..9, the validation fold
    assert seen[100] == (1, 0) and seen[101] == (0, 1)


# --- the stages ----------------------------------------------------------------------------------


def write_extra(root: Path, data: Path, rename: dict[str, str]) -> Path:
    """An external dataset (csv layout) made of the competition's test digits, its labels spelt
    its own way (``rename``: class -> its label)."""
    folder = root / "extra"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    solution = pd.read_csv(data / "solution.csv", dtype=str)
    for image_id in solution["id"]:
        shutil.copy(data / "test" / f"{image_id}.png", folder / "images" / f"{image_id}.png")
    pd.DataFrame({"image": solution["id"], "digit": solution["label"].map(rename)}).to_csv(folder / "labels.csv", index=False)
    return folder


RENAME = {str(d): f"d{d}" for d in range(10)}


def pipeline(folder: Path, label_map: dict[str, str] | None = None):
    extra = {"source": {"type": "local", "path": str(folder)}, "train_csv": "labels.csv", "id_column": "image",
             "label_column": "digit", "train_dir": "images",
             "label_map": {label: digit for digit, label in RENAME.items()} if label_map is None else label_map}
    data = {**TINY["data"], "source": {"type": "embedded", "dataset": "digits", "limit": 50}, "extra": [extra]}
    return make_config(data=data, models=[MODEL])


@pytest.fixture(scope="module")
def competition(tmp_path_factory) -> tuple[Paths, Path]:
    root = tmp_path_factory.mktemp("extra")
    paths = Paths.for_pipeline("tiny", root / "run")
    download.run(make_config(data={**TINY["data"], "source": {"type": "embedded", "dataset": "digits", "limit": 50}}),
                 paths)
    return paths, write_extra(root, paths.data, RENAME)


@pytest.mark.slow
def test_external_rows_train_every_fold_and_reach_no_oof(competition, capsys) -> None:
    paths, folder = competition
    cfg = pipeline(folder)
    folds.run(cfg, paths)
    extra = folds_file.read_extra(paths.folds)
    solution = pd.read_csv(paths.data / "solution.csv", dtype=str)
    assert extra["id"].tolist() == [f"extra0:{i}" for i in solution["id"]]
    assert extra["label"].tolist() == solution["label"].tolist()  # mapped back onto the classes
    fold_ids = set(folds_file.read(paths.folds, 2)["id"])
    assert not fold_ids & set(extra["id"])

    train.run(cfg, paths, workers=1)

    oof = predictions.read_predictions(paths.oof / "m.parquet", folds_file.read_classes(paths.folds, cfg),
                                       extra=("fold",))
    assert set(oof.index) == fold_ids  # the CV's rows: not one external row
    record = manifest.read(paths.models / "m")
    assert record["extra"]["rows"] == len(extra) and record["extra"]["digest"] == folds_file.extra_digest(extra)
    assert np.load(paths.cache / "16" / "extra.npy", mmap_mode="r").shape[0] == len(extra)  # raw: cache/<size>/<split>.npy

    # A changed external dataset: `train` asks for new folds, whose digest trains every fold again.
    labels = pd.read_csv(folder / "labels.csv", dtype=str)
    labels.loc[0, "digit"] = "d9" if labels.loc[0, "digit"] != "d9" else "d8"
    labels.to_csv(folder / "labels.csv", index=False)
    with pytest.raises(DataError, match=r"extra.csv: id 'extra0:.*' has label .* run `make folds` again"):
        train.run(cfg, paths, workers=1)
    before = json.loads((paths.models / "m" / "fold0" / "done.json").read_text())["fingerprint"]
    folds.run(cfg, paths)
    capsys.readouterr()
    train.run(cfg, paths, workers=1)
    assert "skip" not in capsys.readouterr().out
    assert json.loads((paths.models / "m" / "fold0" / "done.json").read_text())["fingerprint"] != before


def test_a_label_outside_the_label_map_is_one_line_naming_file_row_and_label(competition) -> None:
    paths, folder = competition
    cfg = pipeline(folder, label_map={label: digit for digit, label in RENAME.items() if digit != "3"})
    third = pd.read_csv(folder / "labels.csv", dtype=str)["digit"].tolist().index("d3")
    with pytest.raises(DataError, match=rf"labels.csv: row {third + 2} \(id '.*'\): label 'd3' is not in "
                                        r"data.extra\[0\].label_map") as error:
        folds.run(cfg, paths)
    assert "\n" not in str(error.value)


def test_a_label_map_onto_no_scored_class_is_refused(competition) -> None:
    paths, folder = competition
    cfg = pipeline(folder, label_map={**{label: digit for digit, label in RENAME.items()}, "d3": "three"})
    with pytest.raises(DataError, match=r"data.extra\[0\].label_map: 'three' is not a scored class"):
        folds.run(cfg, paths)


# --- a finer training label (data.train_label) ------------------------------------------------------


FINE_MAP = {f"{digit}{half}": str(digit) for digit in range(10) for half in "ab"}


def fine_pipeline(root: Path, data: Path) -> tuple:
    """The digits with a finer label beside the scored one: each digit split in two (``3a``, ``3b``)."""
    paths = Paths.for_pipeline("fine", root)
    shutil.copytree(data, paths.data)
    table = pd.read_csv(paths.data / "train.csv", dtype=str)
    table["fine"] = [label + "ab"[row % 2] for row, label in enumerate(table["label"])]
    table.to_csv(paths.data / "train.csv", index=False)
    data_keys = {**TINY["data"], "source": {"type": "embedded", "dataset": "digits", "limit": 50},
                 "train_label": "fine", "label_map": FINE_MAP}
    return make_config(data=data_keys, models=[MODEL]), paths


@pytest.mark.slow
def test_a_finer_train_label_is_summed_onto_the_scored_classes(competition, tmp_path, caplog) -> None:
    cfg, paths = fine_pipeline(tmp_path, competition[0].data)
    folds.run(cfg, paths)
    train.run(cfg, paths, workers=1)
    predict.run(cfg, paths, workers=1)
    classes = folds_file.read_classes(paths.folds, cfg)
    assert classes.names == tuple(str(d) for d in range(10))  # the scored classes, not the 20 fine ones
    oof = pd.read_parquet(paths.oof / "m.parquet")
    test = pd.read_parquet(paths.test / "m.parquet")
    assert list(oof.columns) == ["id", "fold", *classes.columns]
    assert list(test.columns) == ["id", *classes.columns]
    for table in (oof, test):
        np.testing.assert_allclose(table[list(classes.columns)].sum(axis=1), 1.0, atol=1e-5)
    done = json.loads((paths.models / "m" / "fold0" / "done.json").read_text())
    assert np.isfinite(done["score"])
    h5py = pytest.importorskip("h5py")
    widths = []
    with h5py.File(paths.models / "m" / "fold0" / "best.weights.h5", "r") as weights:
        weights.visititems(lambda name, item: widths.append(item.shape[-1]) if isinstance(item, h5py.Dataset) and item.shape else None)
    assert len(FINE_MAP) in widths  # the network's outputs: the fine classes

    # Grad-CAM rebuilds the fine network: the report's heatmaps reproduce its OOF (summed), and
    # `predict --images --explain` explains each image by its top fine class.
    stack.run(cfg, paths)
    submit.run(cfg, paths)
    with caplog.at_level(logging.WARNING, logger="foldstack"):
        report.run(cfg, paths)
    assert "away from its OOF" not in caplog.text, caplog.text
    assert "Grad-CAM: m" in (paths.artifacts / "report.html").read_text()
    out = tmp_path / "new.csv"
    predict.images(cfg, paths, paths.data / "test", out, skip_unreadable=False, workers=1, explain=True)
    written = pd.read_csv(out, dtype=str)
    assert set(written["label"]) <= set(classes.names) and len(written) == len(list((paths.data / "test").iterdir()))
    pictures = [tmp_path / picture for picture in written["heatmap"]]
    assert pictures and all(picture.is_file() for picture in pictures)


@pytest.mark.parametrize("recipe", [{"pseudo_labels": {"from": ["teacher"]}}, {"distill": {"from": ["teacher"]}},
                                    {"class_weights": True}])
def test_recipes_given_per_scored_class_are_refused_with_a_finer_train_label(recipe: dict) -> None:
    data_keys = {**TINY["data"], "train_label": "fine", "label_map": FINE_MAP}
    models = [{**MODEL, "name": "teacher"}, {**MODEL, "name": "student", **recipe}]
    with pytest.raises(ConfigError) as error:
        make_config(data=data_keys, models=models)
    (key,) = recipe
    assert f"models[1].{key}: not with data.train_label" in str(error.value) and "\n" not in str(error.value)


def test_a_fine_label_missing_from_the_map_is_one_line(competition, tmp_path) -> None:
    cfg, paths = fine_pipeline(tmp_path, competition[0].data)
    table = pd.read_csv(paths.data / "train.csv", dtype=str)
    table.loc[3, "fine"] = "3c"
    table.to_csv(paths.data / "train.csv", index=False)
    folds.run(cfg, paths)
    with pytest.raises(DataError, match=r"train.csv: row 5 \(id '.*'\): fine '3c' is not in data.label_map") as error:
        train.run(cfg, paths, workers=1)
    assert "\n" not in str(error.value)
