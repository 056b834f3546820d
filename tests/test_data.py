"""download, the train and test tables, folds and the image cache, on real digits files."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from foldstack import data, folds, images
from foldstack.errors import DataError
from foldstack.paths import Paths

from conftest import make_config


def test_digits_laid_out_as_kaggle_ships_it(tmp_path: Path) -> None:
    cfg = make_config(data={"source": {"type": "embedded", "dataset": "digits"}})
    paths = Paths.for_pipeline("digits", tmp_path)
    data.download(cfg, paths)
    train = pd.read_csv(paths.data / "train.csv")
    sample = pd.read_csv(paths.data / "sample_submission.csv")
    solution = pd.read_csv(paths.data / "solution.csv")
    assert list(train.columns) == ["id", "label"] and list(sample.columns) == ["id", "label"]
    assert len(train) + len(sample) == 1797
    assert len(sample) == 360 and (solution["id"] == sample["id"]).all()
    assert set(train["id"]).isdisjoint(sample["id"])
    # Stratified: every digit keeps its share of the test split within one image.
    shares = solution["label"].value_counts() / train["label"].value_counts()
    assert shares.between(0.2, 0.3).all()
    with Image.open(paths.data / "train" / f"{train['id'][0]}.png") as image:
        assert image.size == (8, 8) and image.mode == "L"
    assert len(list((paths.data / "test").glob("*.png"))) == 360


def test_second_download_does_nothing(tiny_digits) -> None:
    cfg, paths = tiny_digits
    before = (paths.data / data.MARKER).stat().st_mtime_ns
    data.download(cfg, paths)
    assert (paths.data / data.MARKER).stat().st_mtime_ns == before


def test_tables(tiny_digits) -> None:
    cfg, paths = tiny_digits
    train = data.load_train_table(cfg, paths)
    test = data.load_test_table(cfg, paths)
    assert len(train) == 120 and len(test) == 30
    assert all(Path(p).is_file() for p in train["path"])
    assert data.class_names(train["label"], "multiclass") == [str(d) for d in range(10)]


def test_folds_repeat_and_stratify(tiny_digits) -> None:
    cfg, paths = tiny_digits
    first = pd.read_csv(paths.folds)
    again = folds.run(cfg, paths)
    assert list(first.columns) == ["id", "label", "fold"]
    assert (first["fold"].to_numpy() == again["fold"].to_numpy()).all()
    per_fold = pd.crosstab(first["label"], first["fold"])
    assert (per_fold.max(axis=1) - per_fold.min(axis=1)).max() <= 1
    with Image.open(paths.artifacts / "augmentation.png") as preview:  # what the model will see
        assert preview.size[0] > 300 and preview.size[1] > 200


def test_class_rarer_than_folds_is_refused() -> None:
    table = pd.DataFrame({"id": list("abcdef"), "label": ["x", "x", "x", "y", "y", "z"]})
    with pytest.raises(DataError, match="class 'z' has 1 example"):
        folds.make_folds(table, k=2, seed=0)


def test_missing_image_is_named(tiny_digits, tmp_path: Path) -> None:
    cfg, paths = tiny_digits
    train = pd.read_csv(paths.data / "train.csv", dtype=str)
    train.loc[len(train)] = ["ghost", "3"]
    copy = Paths.for_pipeline("tiny", tmp_path)
    import shutil

    shutil.copytree(paths.data, copy.data)
    train.to_csv(copy.data / "train.csv", index=False)
    with pytest.raises(DataError, match=r"row 122 \(id 'ghost'\): image .*ghost.png not found"):
        data.load_train_table(cfg, copy)


def test_image_modes_become_rgb(tmp_path: Path) -> None:
    grey16 = Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000))
    palette = Image.new("P", (8, 8), 3)
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    for name, image in {"g16.png": grey16, "p.png": palette, "rgba.png": rgba}.items():
        image.save(tmp_path / name)
        array = images.load_rgb(tmp_path / name)
        assert array.dtype == np.uint8 and array.shape == (8, 8, 3), name
    assert images.load_rgb(tmp_path / "g16.png").max() > 200  # scaled, not clipped to the low byte
    assert (images.load_rgb(tmp_path / "rgba.png") == 255).all()  # transparent -> white


def test_unreadable_images_are_named(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match=r"empty.png: cannot read image: empty file"):
        images.load_rgb(tmp_path / "empty.png")
    with pytest.raises(DataError, match=r"text.png: cannot read image"):
        images.load_rgb(tmp_path / "text.png")


def test_cache_is_built_once(tiny_digits, tmp_path: Path) -> None:
    cfg, paths = tiny_digits
    train = data.load_train_table(cfg, paths)
    target = tmp_path / "cache" / "train.npy"
    array = images.cached_images(train["path"].tolist(), train["id"].tolist(), 16, target)
    assert array.shape == (120, 16, 16, 3) and array.dtype == np.uint8
    stamp = target.stat().st_mtime_ns
    again = images.cached_images(train["path"].tolist(), train["id"].tolist(), 16, target)
    assert target.stat().st_mtime_ns == stamp and np.array_equal(array, again)
    assert not list(target.parent.glob("*.tmp"))
