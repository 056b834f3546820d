"""The predict stage and `foldstack predict --images`: a tiny pipeline trained once, then its
folds and saved stack predict the test set and folders of new images; images from another
dataset are named as unlike the training images, held-out digits are not; bad input is one line
and leaves earlier outputs in place."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from sklearn.datasets import load_digits

from foldstack import cli
from foldstack.core.paths import Paths
from foldstack.pipeline import load_pipeline
from foldstack.plots.heatmaps import overlay
from foldstack.stages import predict, stack, train
from foldstack.data.cache import open_images
from foldstack.training import worker
from foldstack.training.fold_task import FoldTask, predict_task
from foldstack.training.gradcam import explain
from foldstack.training.regimes import trained_network, tta_predictor

from competitions import save_dicom
from conftest import TINY
from test_bad_input import assert_one_line

CLASSES = [str(d) for d in range(10)]
MODEL = {"name": "cnn", "backbone": "small_cnn", "weights": "none", "image_size": 16, "regime": "scratch",
         "epochs": 3, "batch_size": 32, "lr": 0.003}


@pytest.fixture(scope="module")
def trained(tiny_digits, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny competition trained, predicted and stacked in a folder of its own: ``(root, yaml)``."""
    _, source = tiny_digits
    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(source.root, root, dirs_exist_ok=True)
    raw = {**copy.deepcopy(TINY), "models": [MODEL], "stack": {"candidates": ["mean"]}}
    (root / "tiny.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_pipeline(root / "tiny.yaml")
    paths = Paths.for_pipeline("tiny", root)
    train.run(cfg, paths, workers=1)
    predict.run(cfg, paths, workers=1)
    stack.run(cfg, paths)
    return root, root / "tiny.yaml"


def run(trained, capsys, *args: str) -> tuple[int, str, str]:
    """``foldstack predict`` on the trained pipeline: exit status, stdout, stderr."""
    root, config = trained
    capsys.readouterr()
    code = cli.main(["predict", "--pipeline", str(config), "--root", str(root), *args])
    out, err = capsys.readouterr()
    return code, out, err


def unseen_digits(root: Path, n: int) -> list[tuple[int, np.ndarray]]:
    """``n`` digits of scikit-learn's set that the tiny competition holds neither in train nor
    test, as (label, 8-bit image), like the competition's own images."""
    tables = [pd.read_csv(root / "data" / "tiny" / name, dtype=str) for name in ("train.csv", "sample_submission.csv")]
    used = {int(i.removeprefix("digit_")) for table in tables for i in table["id"]}
    digits = load_digits()
    free = [i for i in range(len(digits.target)) if i not in used][:n]
    return [(int(digits.target[i]), np.rint(digits.images[i] * (255.0 / 16.0)).astype(np.uint8)) for i in free]


PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "rocket")


def test_images_predicts_every_image_and_names_those_unlike_the_training_images(trained, capsys, caplog,
                                                                                tmp_path: Path) -> None:
    """Unseen digits (PNG and JPEG, in sub-folders too, and a DICOM twin of one PNG) are predicted
    and pass; photos from scikit-image are predicted and named in the warning; other files are not
    images."""
    import skimage.data

    folder = tmp_path / "new"
    (folder / "more" / "deeper").mkdir(parents=True)
    digits = []
    for i, (label, image) in enumerate(unseen_digits(trained[0], 20)):
        name = ["", "more", "more/deeper"][i % 3] + f"/digit{i}.{'jpg' if i % 4 == 0 else 'png'}"
        Image.fromarray(image, mode="L").save(folder / name.lstrip("/"))
        digits.append(name.lstrip("/"))
    twin = digits[1].replace(".png", ".dcm")
    save_dicom(np.repeat(np.asarray(Image.open(folder / digits[1]))[..., None], 3, axis=-1), folder / twin, "twin")
    digits.append(twin)
    photos = [f"photo_{name}.jpg" for name in PHOTOS]
    for name, file in zip(PHOTOS, photos):
        Image.fromarray(getattr(skimage.data, name)()).save(folder / file)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".thumbs").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / ".thumbs" / "hidden.png")

    code, out, err = run(trained, capsys, "--images", str(folder), "--out", str(tmp_path / "out.csv"))
    assert code == 0, err
    assert re.search(r"predicted 26 images in [\d.]+ s \([\d.]+ images/s\)", out)
    frame = pd.read_csv(tmp_path / "out.csv", dtype={"label": str})
    assert list(frame.columns) == ["image", "label", *CLASSES, "distance", "unfamiliar"]
    assert sorted(frame["image"]) == sorted(digits + photos)
    proba = frame[CLASSES].to_numpy()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert (frame["label"] == np.array(CLASSES)[proba.argmax(axis=1)]).all()
    assert sorted(frame.loc[frame["unfamiliar"], "image"]) == sorted(photos)
    by_image = frame.set_index("image")[CLASSES]
    np.testing.assert_allclose(by_image.loc[twin], by_image.loc[digits[1]], rtol=0, atol=1e-6)  # DICOM read as its PNG
    warning = [r.message for r in caplog.records if "unlike the training images" in r.message]
    assert len(warning) == 1 and all(photo in warning[0] for photo in photos), warning
    assert not any(digit in warning[0] for digit in digits)


def test_images_of_the_test_set_get_the_stack_stage_predictions(trained, capsys, tmp_path: Path) -> None:
    """The same images through `--images` and through predict -> stack: the same probabilities."""
    root, _ = trained
    code, _, err = run(trained, capsys, "--images", str(root / "data" / "tiny" / "test"), "--out",
                       str(tmp_path / "test.csv"))
    assert code == 0, err
    frame = pd.read_csv(tmp_path / "test.csv").assign(id=lambda f: f["image"].str.removesuffix(".png"))
    staged = pd.read_parquet(root / "artifacts" / "tiny" / "stack" / "test.parquet").set_index("id")
    assert sorted(frame["id"]) == sorted(staged.index)
    np.testing.assert_allclose(frame.set_index("id").loc[staged.index, CLASSES].to_numpy(),
                               staged[CLASSES].to_numpy(), rtol=0, atol=1e-6)
    assert not frame["unfamiliar"].any()  # the competition's own test digits


def _missing(folder: Path) -> str:
    return re.escape(str(folder / "absent")) + ": folder not found$"


def _empty(folder: Path) -> str:
    (folder / "empty").mkdir()
    (folder / "empty" / "readme.txt").write_text("no images here")
    return re.escape(str(folder / "empty")) + r": no images in it or its sub-folders"


def _unreadable(folder: Path) -> str:
    (folder / "mixed").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "mixed" / "good.png")
    (folder / "mixed" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return re.escape(str(folder / "mixed" / "broken.png")) + r": cannot read image: .*; pass --skip-unreadable"


BAD_FOLDERS = {"missing folder": ("absent", _missing), "empty folder": ("empty", _empty),
               "unreadable image": ("mixed", _unreadable)}


@pytest.mark.parametrize("case", BAD_FOLDERS)
def test_bad_images_folder_is_one_line_and_keeps_the_earlier_output(case: str, trained, capsys,
                                                                     tmp_path: Path) -> None:
    name, make = BAD_FOLDERS[case]
    pattern = make(tmp_path)
    out = tmp_path / "out.csv"
    out.write_text("earlier output\n")
    code, _, err = run(trained, capsys, "--images", str(tmp_path / name), "--out", str(out))
    assert_one_line(code, err, "foldstack predict: error: " + pattern)
    assert out.read_text() == "earlier output\n"


def test_skip_unreadable_predicts_the_others_and_names_the_skipped(trained, capsys, caplog, tmp_path: Path) -> None:
    _unreadable(tmp_path)
    code, _, err = run(trained, capsys, "--images", str(tmp_path / "mixed"), "--out", str(tmp_path / "out.csv"),
                       "--skip-unreadable")
    assert code == 0, err
    assert pd.read_csv(tmp_path / "out.csv")["image"].tolist() == ["good.png"]
    assert any("skipped" in r.message and "broken.png" in r.message for r in caplog.records)


def test_missing_or_foreign_fold_weights_are_one_line_and_keep_the_predictions(trained, capsys,
                                                                               tmp_path: Path) -> None:
    root, config = trained
    art = root / "artifacts" / "tiny"
    before = (art / "test" / "cnn.parquet").read_bytes()
    weights = art / "models" / "cnn" / "fold1" / "best.weights.h5"
    kept = weights.read_bytes()
    try:
        weights.unlink()
        code, _, err = run(trained, capsys)
        assert_one_line(code, err, re.escape(str(weights)) + ": not found; run the train stage again$")
        weights.write_bytes(b"not weights at all")
        code, _, err = run(trained, capsys, "--images", str(root / "data" / "tiny" / "test"),
                           "--out", str(tmp_path / "out.csv"))
        assert_one_line(code, err, re.escape(str(weights)) + ": does not fit model 'cnn' as the pipeline defines it")
        assert not (tmp_path / "out.csv").exists()
    finally:
        weights.write_bytes(kept)
    raw = yaml.safe_load(config.read_text())
    raw["models"][0]["epochs"] = 4  # another recipe than the one the folds were trained with
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    code = cli.main(["predict", "--pipeline", str(other), "--root", str(root)])
    assert_one_line(code, capsys.readouterr().err,
                    r"fold0/done.json: fold 0 of model 'cnn' was trained by another recipe .*; "
                    r"run the train stage again$")
    assert (art / "test" / "cnn.parquet").read_bytes() == before


def test_a_corrupt_test_image_is_one_line_and_keeps_the_test_predictions(trained, capsys, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(trained[0], root)
    test = root / "artifacts" / "tiny" / "test" / "cnn.parquet"
    before = test.read_bytes()
    shutil.rmtree(root / "artifacts" / "tiny" / "cache" / "16")  # as on a machine that never decoded them
    image = sorted((root / "data" / "tiny" / "test").glob("*.png"))[3]
    image.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "artifacts" / "tiny" / "test" / "cnn.key").unlink()  # stale: predict again
    capsys.readouterr()
    code = cli.main(["predict", "--pipeline", str(root / "tiny.yaml"), "--root", str(root)])
    assert_one_line(code, capsys.readouterr().err, re.escape(str(image)) + ": cannot read image: ")
    assert test.read_bytes() == before


def test_a_new_test_set_is_predicted_stacked_and_submitted_without_training(trained, capsys, tmp_path: Path) -> None:
    """Swap in a test set of new ids and new images: `train` only skips, `predict` predicts them,
    `stack` applies its saved model (no CV), `submit` writes them."""
    root = tmp_path / "copy"
    shutil.copytree(trained[0], root)
    config = root / "tiny.yaml"
    data, art = root / "data" / "tiny", root / "artifacts" / "tiny"
    shutil.rmtree(data / "test")
    (data / "test").mkdir()
    new = unseen_digits(root, 12)
    ids = [f"new_{i:03d}" for i in range(len(new))]
    for i, (_, image) in zip(ids, new):
        Image.fromarray(image, mode="L").save(data / "test" / f"{i}.png")
    pd.DataFrame({"id": ids, "label": 0}).to_csv(data / "sample_submission.csv", index=False)
    pd.DataFrame({"id": ids, "label": [label for label, _ in new]}).to_csv(data / "solution.csv", index=False)
    done = {path: path.stat().st_mtime_ns for path in art.glob("models/*/fold*/done.json")}

    def stage(name: str) -> str:
        capsys.readouterr()
        code = cli.main([name, "--pipeline", str(config), "--root", str(root)])
        out, err = capsys.readouterr()
        assert code == 0, err
        return out

    trained_again = stage("train")
    assert "skip cnn fold 0" in trained_again and "skip cnn fold 1" in trained_again
    assert "cnn: predicted 12 test images, 2 folds x 1 view(s)" in stage("predict")
    assert "OOF files unchanged since the last CV; applied the saved mean to 12 test rows" in stage("stack")
    assert "local LB accuracy" in stage("submit")
    assert {path: path.stat().st_mtime_ns for path in done} == done  # no fold trained
    assert sorted(pd.read_parquet(art / "test" / "cnn.parquet")["id"]) == ids
    assert sorted(pd.read_parquet(art / "stack" / "test.parquet")["id"]) == ids
    submission = sorted((root / "submissions" / "tiny").glob("tiny-*.csv"))[-1]
    assert pd.read_csv(submission, dtype=str)["id"].tolist() == ids
    assert "skip cnn: test predictions up to date" in stage("predict")


def test_explain_writes_each_images_heatmap_beside_its_prediction(trained, capsys, tmp_path: Path,
                                                                  monkeypatch) -> None:
    """Each picture is the first model's fold 0 Grad-CAM (``gradcam.explain``) of the image, for
    the class the CSV predicts, and the heatmaps are neither blank nor constant nor all alike."""
    root, config = trained
    folder = tmp_path / "few"
    folder.mkdir()
    for name in sorted((root / "data" / "tiny" / "test").glob("*.png"))[:3]:
        shutil.copy(name, folder / name.name)
    drawn = []

    def recorded(image, heatmap, path, title=None):
        drawn.append((np.array(image), np.array(heatmap), title))
        return overlay(image, heatmap, path, title=title)

    monkeypatch.setattr(predict, "overlay", recorded)
    code, _, err = run(trained, capsys, "--images", str(folder), "--out", str(tmp_path / "few.csv"), "--explain")
    assert code == 0, err
    frame = pd.read_csv(tmp_path / "few.csv", dtype={"label": str})
    assert len(frame) == 3 and frame["heatmap"].str.startswith("few-explain/").all()

    cfg = load_pipeline(config)
    model, names = cfg.models[0], [str(digit) for digit in range(10)]
    task = FoldTask(model=model, task=cfg.task, metric=cfg.metric, y=np.zeros(0, np.int64), n_classes=10,
                    train_index=np.zeros(0, np.int64), valid_index=np.zeros(0, np.int64), augment=cfg.augment,
                    caches={}, fold_dir=Paths.for_pipeline("tiny", root).models / model.name / "fold0", seed=cfg.seed)
    images = np.stack([image for image, _, _ in drawn])
    predicted = np.array([names.index(label) for label in frame["label"]])
    expected = explain(task, images, class_index=predicted)
    for (_, heatmap, title), label, want in zip(drawn, frame["label"], expected.heatmaps):
        assert title.endswith(f"where {label} shows")
        np.testing.assert_allclose(heatmap, want, atol=1e-5)
        assert heatmap.max() - heatmap.min() > 0.5  # neither blank nor constant
    heatmaps = [heatmap for _, heatmap, _ in drawn]
    assert all(np.abs(a - b).max() > 0.1 for i, a in enumerate(heatmaps) for b in heatmaps[i + 1:])
    for picture in frame["heatmap"]:
        with Image.open(tmp_path / picture) as image:
            assert image.size[0] > 100 and image.size[1] > 50
    assert sorted(p.name for p in (tmp_path / "few-explain").iterdir()) == sorted(Path(p).name for p in frame["heatmap"])
    code, _, err = run(trained, capsys, "--explain")  # without --images there is nothing to explain
    assert code == 2 and "--explain and --table go with --images DIR" in err


def test_the_folds_share_one_network_and_each_predicts_as_its_own_network_would(trained) -> None:
    """One fold process predicts every fold by giving one network each fold's weights in turn (its
    traced predict function kept): each fold's probabilities are those of a network built for that
    fold alone, and the two folds' differ (fold 1 did not keep fold 0's weights)."""
    root, config = trained
    cfg = load_pipeline(config)
    paths = Paths.for_pipeline("tiny", root)
    images = paths.cache / "16" / "test.npy"
    fold_dirs = (paths.models / "cnn" / "fold0", paths.models / "cnn" / "fold1")
    task = predict_task(cfg, paths.models, cfg.models[0], len(CLASSES), images, fold_dirs, split=None)
    ticks = []
    shared = worker.predict_folds(task, send=ticks.append)

    rows = np.arange(len(open_images(images)))
    alone = [tta_predictor(task, trained_network(task, fold_dir), {task.split: open_images(images)})(task.split, rows)
             for fold_dir in fold_dirs]
    assert len(ticks) == 2 and len(shared) == 2
    for got, want in zip(shared, alone):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert np.abs(shared[0] - shared[1]).max() > 1e-3
