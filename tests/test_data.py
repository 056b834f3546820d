"""download, the train and test tables, folds and the image cache, on real digits files."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_config
from PIL import Image

from foldstack.core.errors import DataError
from foldstack.core.paths import Paths
from foldstack.data import images, sources, splits, tables
from foldstack.data.cache import cached_images
from foldstack.data.labels import Classes
from foldstack.stages import download, folds


def test_digits_laid_out_as_kaggle_ships_it(tmp_path: Path) -> None:
    cfg = make_config(data={"source": {"type": "embedded", "dataset": "digits"}})
    paths = Paths.for_pipeline("digits", tmp_path)
    download.run(cfg, paths)
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
    before = (paths.data / sources.MARKER).stat().st_mtime_ns
    download.run(cfg, paths)
    assert (paths.data / sources.MARKER).stat().st_mtime_ns == before


def test_tables(tiny_digits) -> None:
    cfg, paths = tiny_digits
    train = tables.load_train_table(cfg, paths)
    test = tables.load_test_table(cfg, paths)
    assert len(train) == 120 and len(test) == 30
    assert all(Path(p).is_file() for p in train["path"])
    assert Classes.from_labels(train["label"], "multiclass").names == tuple(str(d) for d in range(10))


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
        splits.make_folds(table, k=2, seed=0, task="multiclass")


def test_missing_image_is_named(tiny_digits, tmp_path: Path) -> None:
    cfg, paths = tiny_digits
    train = pd.read_csv(paths.data / "train.csv", dtype=str)
    train.loc[len(train)] = ["ghost", "3"]
    copy = Paths.for_pipeline("tiny", tmp_path)
    import shutil

    shutil.copytree(paths.data, copy.data)
    train.to_csv(copy.data / "train.csv", index=False)
    with pytest.raises(DataError, match=r"row 122 \(id 'ghost'\): image .*ghost.png not found"):
        tables.load_train_table(cfg, copy)


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
    train = tables.load_train_table(cfg, paths)
    target = tmp_path / "cache" / "train.npy"
    array = cached_images(train["path"].tolist(), train["id"].tolist(), 16, target)
    assert array.shape == (120, 16, 16, 3) and array.dtype == np.uint8
    stamp = target.stat().st_mtime_ns
    again = cached_images(train["path"].tolist(), train["id"].tolist(), 16, target)
    assert target.stat().st_mtime_ns == stamp and np.array_equal(array, again)
    assert not list(target.parent.glob("*.tmp"))


def test_stratified_folds_keep_class_names_with_spaces_apart() -> None:
    """Plant seedlings' "Common wheat" and "Common Chickweed" are two classes: each is spread
    evenly over the folds (the first word alone merged them, and "Common wheat" came out
    11, 9, 14, 15, 16 over five folds)."""
    labels = ["Common wheat"] * 65 + ["Common Chickweed"] * 35 + ["Loose Silky-bent"] * 50 + ["Maize"] * 50
    table = pd.DataFrame({"id": [f"i{n}" for n in range(len(labels))], "label": labels})
    fold = splits.make_folds(table, k=5, seed=0, task="multiclass")
    per_fold = pd.crosstab(table["label"], fold)
    assert (per_fold.max(axis=1) - per_fold.min(axis=1)).max() <= 1, per_fold
    rare = splits.rare_classes(pd.Series(["Common wheat"] * 5 + ["Common Chickweed"] * 2), 5, "multiclass")
    assert rare == ["class 'Common Chickweed' has 2 example(s), fewer than the 5 folds (folds.k); merge rare "
                    "classes or lower folds.k"]


def test_one_class_order_and_encoder() -> None:
    labels = pd.Series(["10", "2", "1", "2"], index=["a", "b", "c", "d"])
    classes = Classes.from_labels(labels, "multiclass")
    assert classes.names == ("1", "2", "10")  # numbers in numeric order
    assert classes.encode(labels).tolist() == [2, 1, 0, 1]
    with pytest.raises(DataError, match=r"where.csv: id 'x' has label '3', which is not a class"):
        classes.encode(pd.Series(["3"], index=["x"]), "where.csv")
    tags = Classes.from_labels(pd.Series(["cat|dog", "", "dog"]), "multilabel")
    assert tags.names == ("cat", "dog") and tags.encode(pd.Series(["dog|cat", "", "dog"])).tolist() == [[1, 1], [0, 0], [0, 1]]


def test_a_cache_killed_between_its_images_and_its_ids_is_rebuilt(tiny_digits, tmp_path: Path, monkeypatch) -> None:
    """New images under the cache's name, then a kill before the new ids file: the old ids must
    not stay paired with the new images."""
    cfg, paths = tiny_digits
    train = tables.load_train_table(cfg, paths)
    target = tmp_path / "cache" / "train.npy"
    first, second = train.iloc[:10], train.iloc[10:20]
    old = cached_images(first["path"].tolist(), first["id"].tolist(), 16, target).copy()

    def killed(path, text):
        raise KeyboardInterrupt

    monkeypatch.setattr("foldstack.data.cache.write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        cached_images(second["path"].tolist(), second["id"].tolist(), 16, target)
    monkeypatch.undo()
    again = cached_images(first["path"].tolist(), first["id"].tolist(), 16, target)
    np.testing.assert_array_equal(again, old)
