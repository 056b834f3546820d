"""Competition layouts as real competitions ship them: archives inside a download, one-hot label
columns, labels in file names, class folders with a flat test folder, a test table, one folder for
train and test, TIFF / 16-bit PNG / DICOM images, and the positive class of a binary task. Each
on tiny real files made here, through the download and check stages and the table readers."""

from __future__ import annotations

import logging
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_config
from PIL import Image

from foldstack.core import metrics
from foldstack.core.config import ConfigError
from foldstack.core.errors import DataError
from foldstack.core.paths import Paths
from foldstack.data import archives, images, sources, tables
from foldstack.data.labels import Classes
from foldstack.stages import check, download, submit

RNG = np.random.default_rng(0)


def _png(path: Path, value: int = 0) -> Path:
    """An 8x8 RGB PNG: noise plus ``value``, so every file differs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(RNG.integers(0, 100, (8, 8, 3)) + value, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _csv(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def _pipeline(tmp_path: Path, source: Path, task: str = "multiclass", **data):
    cfg = make_config(task=task, data={"source": {"type": "local", "path": str(source)}, **data})
    return cfg, Paths.for_pipeline("tiny", tmp_path / "root")


def _local(tmp_path: Path, source: Path, task: str = "multiclass", **data):
    """A pipeline reading ``source`` as a local competition, downloaded."""
    cfg, paths = _pipeline(tmp_path, source, task, **data)
    download.run(cfg, paths)
    return cfg, paths


def _problems(cfg, paths) -> list[str]:
    return check.run(cfg, paths).problems


# --- archives inside a download ------------------------------------------------------------------


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _cactus(folder: Path) -> Path:
    """aerial-cactus's shape: train.csv, train.zip holding ``train/``, test.zip with flat members;
    also a zip inside a zip, and sample_submission.csv.zip holding that one file."""
    ids = [f"img{i}.png" for i in range(6)]
    _csv(folder / "train.csv", pd.DataFrame({"id": ids, "has_cactus": [0, 1] * 3}))
    pngs = folder.parent / "pngs"
    _csv(pngs / "sample_submission.csv", pd.DataFrame({"id": ["t0.png", "t1.png"], "has_cactus": 0.5}))
    _zip(folder / "sample_submission.csv.zip", {"sample_submission.csv": (pngs / "sample_submission.csv").read_bytes()})
    _zip(folder / "train.zip", {f"train/{i}": _png(pngs / i).read_bytes() for i in ids})
    _zip(folder / "test.zip", {i: _png(pngs / i).read_bytes() for i in ("t0.png", "t1.png")})
    inner = _zip(pngs / "inner.zip", {"notes.txt": b"hello"})
    _zip(folder / "extra.zip", {"extra/inner.zip": inner.read_bytes()})
    return folder


def test_archives_are_unpacked_once_as_part_of_the_download(tmp_path: Path) -> None:
    source = _cactus(tmp_path / "competition")
    cfg, paths = _local(tmp_path, source, task="binary", label_column="has_cactus", ids_have_extension=True)
    data = paths.data
    assert sorted(p.name for p in (data / "train").iterdir()) == [f"img{i}.png" for i in range(6)]
    assert sorted(p.name for p in (data / "test").iterdir()) == ["t0.png", "t1.png"]  # flat: a folder by its stem
    assert (data / "extra" / "inner" / "notes.txt").read_bytes() == b"hello"  # the zip inside the zip
    assert (data / "sample_submission.csv").is_file()  # one file named by its stem: beside it
    assert not list(data.rglob("*.zip")) and (source / "train.zip").is_file()  # the source stays as shipped
    assert len(tables.load_train_table(cfg, paths)) == 6 and len(tables.load_test_table(cfg, paths)) == 2
    assert _problems(cfg, paths) == []
    before = (data / sources.MARKER).stat().st_mtime_ns
    download.run(cfg, paths)  # up to date: nothing fetched or unpacked again
    assert (data / sources.MARKER).stat().st_mtime_ns == before


def test_interrupted_unpacking_keeps_the_previous_download(tmp_path: Path, monkeypatch) -> None:
    source = _cactus(tmp_path / "competition")
    cfg, paths = _local(tmp_path, source, task="binary", label_column="has_cactus", ids_have_extension=True)
    before = sorted(p.relative_to(paths.data).as_posix() for p in paths.data.rglob("*"))
    unpack = archives.unpack

    def killed_midway(archive: Path, shown: Path | None = None) -> Path:
        unpack(archive, shown)
        raise KeyboardInterrupt

    monkeypatch.setattr(archives, "unpack", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        download.run(cfg, paths, force=True)
    assert sorted(p.relative_to(paths.data).as_posix() for p in paths.data.rglob("*")) == before
    assert [p.name for p in paths.data.parent.iterdir()] == [paths.data.name]  # no half-unpacked folder left


@pytest.mark.parametrize("case, members, message", [
    ("escape", {"../evil.png": b"x"}, r"member '\.\./evil\.png' would land outside the folder it unpacks into"),
    ("absolute", {"/tmp/evil.png": b"x"}, r"member '/tmp/evil\.png' would land outside"),
    ("overwrite", {"train.csv": b"x"}, r"member 'train\.csv' would overwrite"),
])
def test_unsafe_archive_is_refused_and_nothing_is_left(case: str, members: dict, message: str,
                                                         tmp_path: Path) -> None:
    source = tmp_path / "competition"
    _csv(source / "train.csv", pd.DataFrame({"id": ["a"], "label": ["x"]}))
    # A flat archive goes into a folder named by its stem: '.' puts it at the root, onto train.csv.
    _zip(source / ("..zip" if case == "overwrite" else "bad.zip"), members)
    cfg, paths = _pipeline(tmp_path, source)
    with pytest.raises(DataError, match=message) as error:
        download.run(cfg, paths)
    assert "\n" not in str(error.value) and str(paths.data) in str(error.value)
    assert not paths.data.exists() and not list(paths.data.parent.iterdir())  # no temporary left
    assert not (tmp_path / "evil.png").exists()


def test_broken_archive_fails_the_download_and_check_names_a_packed_one(tmp_path: Path) -> None:
    source = _cactus(tmp_path / "competition")
    (source / "broken.zip").write_bytes(b"PK\x03\x04 not really a zip")
    cfg, paths = _pipeline(tmp_path, source, task="binary", label_column="has_cactus", ids_have_extension=True)
    with pytest.raises(DataError, match=r"broken\.zip: cannot unpack: File is not a zip file"):
        download.run(cfg, paths)
    # Downloaded without unpacking, then checked with it on: every archive left is a problem.
    raw = make_config(task="binary", data={**cfg.data.model_dump(mode="json"), "unpack": False})
    download.run(raw, paths)
    problems = _problems(cfg, paths)
    assert f"{paths.data / 'broken.zip'}: cannot unpack: File is not a zip file" in problems
    assert (f"{paths.data / 'train.zip'}: archive not unpacked (data.unpack is on); run the download stage "
            "with --force") in problems


# --- labels from one-hot columns -----------------------------------------------------------------

CLASSES = ["healthy", "multiple_diseases", "rust", "scab"]


def _pathology(folder: Path, hot: list[list[int]]) -> Path:
    """plant-pathology's shape: images/ holds Train_* and Test_*, one-hot train.csv, test.csv."""
    ids = [f"Train_{i}" for i in range(len(hot))]
    _csv(folder / "train.csv", pd.DataFrame(hot, columns=CLASSES).assign(image_id=ids)[["image_id", *CLASSES]])
    test_ids = ["Test_1", "Test_0"]
    _csv(folder / "test.csv", pd.DataFrame({"image_id": sorted(test_ids)}))
    _csv(folder / "sample_submission.csv", pd.DataFrame({"image_id": test_ids, **{c: 0.25 for c in CLASSES}}))
    for i in [*ids, *test_ids]:
        _png(folder / "images" / f"{i}.png")
    return folder


def _pathology_config(tmp_path: Path, source: Path, task: str = "multiclass"):
    return _local(tmp_path, source, task, train_csv="train.csv", id_column="image_id", label_columns=CLASSES,
                  train_dir="images", test_dir="images", test_csv="test.csv")


def test_one_hot_columns_give_the_labels(tmp_path: Path, caplog) -> None:
    hot = [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 1, 0, 0]] * 2  # each class twice: 2 folds
    source = _pathology(tmp_path / "competition", hot)
    cfg, paths = _pathology_config(tmp_path, source)
    caplog.set_level(logging.WARNING)
    train = tables.load_train_table(cfg, paths)
    assert train["label"].tolist() == ["healthy", "rust", "scab", "multiple_diseases"] * 2
    assert train["id"].tolist() == [f"Train_{i}" for i in range(8)]
    # Train and test share images/: neither split's images are "not used".
    test = tables.load_test_table(cfg, paths)
    assert test["id"].tolist() == ["Test_0", "Test_1"]  # test.csv's ids and order, not the sample's
    assert "not used" not in caplog.text
    report = check.run(cfg, paths)
    assert report.problems == [] and report.warnings == []
    # An image in neither table is still named.
    _png(paths.data / "images" / "Stray_0.png")
    caplog.clear()
    tables.load_train_table(cfg, paths)
    assert "1 image(s) have no row in train.csv and are not used, e.g. Stray_0.png" in caplog.text
    assert any("Stray_0.png" in w and "test.csv" in w for w in check.run(cfg, paths).warnings)


def test_one_hot_multilabel_rows_hold_every_class(tmp_path: Path) -> None:
    source = _pathology(tmp_path / "competition", [[1, 0, 0, 1], [0, 0, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]])
    cfg, paths = _pathology_config(tmp_path, source, task="multilabel")
    train = tables.load_train_table(cfg, paths)  # a row of zeros is a row with no class, not an error
    assert train["label"].tolist() == ["healthy|scab", "rust", "multiple_diseases|rust|scab", ""]
    assert Classes.from_labels(train["label"], "multilabel").encode(train["label"]).tolist() == [
        [1, 0, 0, 1], [0, 0, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]]


@pytest.mark.parametrize("row, message", [
    ([0, 0, 0, 0], r"row 3 \(id 'Train_1'\) has no 1 in the label columns healthy, multiple_diseases, rust, scab; "
                   r"task 'multiclass' needs exactly one"),
    ([0, 1, 1, 0], r"row 3 \(id 'Train_1'\) has several 1 in the label columns"),
    ([0, 2, 0, 0], r"row 3 \(id 'Train_1'\): label column 'multiple_diseases' holds '2', not 0 or 1"),
])
def test_bad_one_hot_row_is_one_line(row: list[int], message: str, tmp_path: Path) -> None:
    source = _pathology(tmp_path / "competition", [[1, 0, 0, 0], row, [0, 0, 1, 0]])
    cfg, paths = _pathology_config(tmp_path, source)
    pattern = re.escape(str(paths.data / "train.csv")) + ": " + message
    with pytest.raises(DataError, match=pattern):
        tables.load_train_table(cfg, paths)
    assert [p for p in _problems(cfg, paths) if re.match(pattern, p)]


def test_multilabel_classes_may_hold_spaces_and_imet_cells_are_space_separated(tmp_path: Path) -> None:
    """ranzcr's one-hot columns ('ETT - Abnormal') are multilabel classes whole, not split into
    'ETT', '-', ...; a competition's own space-separated label column (imet) still reads; only the
    separator itself cannot be in a class name."""
    source = _pathology(tmp_path / "competition", [[1, 0, 0, 1], [0, 0, 1, 0]])
    frame = pd.read_csv(source / "train.csv").rename(columns={"rust": "ETT - Abnormal"})
    _csv(source / "train.csv", frame)
    columns = ["healthy", "multiple_diseases", "ETT - Abnormal", "scab"]
    cfg, paths = _local(tmp_path, source, "multilabel", id_column="image_id", train_dir="images", test_dir="images",
                        label_columns=columns)
    train = tables.load_train_table(cfg, paths)
    classes = Classes.from_labels(train["label"], "multilabel")
    assert classes.names == ("ETT - Abnormal", "healthy", "scab")
    assert classes.encode(train["label"]).tolist() == [[0, 1, 1], [1, 0, 0]]

    _csv(source / "train.csv", pd.DataFrame({"image_id": ["Train_0", "Train_1"], "tags": ["13 405", ""]}))
    cfg, paths = _local(tmp_path / "imet", source, "multilabel", id_column="image_id", train_dir="images",
                        test_dir="images", label_column="tags")
    train = tables.load_train_table(cfg, paths)
    assert Classes.from_labels(train["label"], "multilabel").encode(train["label"]).tolist() == [[1, 1], [0, 0]]

    _csv(source / "train.csv", frame.rename(columns={"ETT - Abnormal": "ETT|Abnormal"}))
    cfg, paths = _local(tmp_path / "bar", source, "multilabel", id_column="image_id", train_dir="images",
                        test_dir="images", label_columns=[*columns[:2], "ETT|Abnormal", "scab"])
    with pytest.raises(DataError, match=r"train\.csv: label column 'ETT\|Abnormal' names a class with '\|'"):
        tables.load_train_table(cfg, paths)


def test_missing_one_hot_column_is_named(tmp_path: Path) -> None:
    source = _pathology(tmp_path / "competition", [[1, 0, 0, 0]])
    cfg, paths = _local(tmp_path, source, id_column="image_id", label_columns=["healthy", "blight"],
                        train_dir="images", test_dir="images")
    with pytest.raises(DataError, match=r"train\.csv: missing column 'blight'"):
        tables.load_train_table(cfg, paths)


# --- labels from the file name ----------------------------------------------------------------------

CAT_DOG = r"^(?P<label>cat|dog)\."


def _cats_dogs(folder: Path, names: list[str]) -> Path:
    """dogs-vs-cats's shape: train/cat.0.png, train/dog.0.png, test/1.png, sample_submission.csv."""
    for name in names:
        _png(folder / "train" / name)
    for i in (1, 2):
        _png(folder / "test" / f"{i}.png")
    _csv(folder / "sample_submission.csv", pd.DataFrame({"id": [1, 2], "label": 0.5}))
    return folder


def test_labels_from_file_names(tmp_path: Path) -> None:
    source = _cats_dogs(tmp_path / "competition", ["cat.0.png", "dog.0.png", "cat.1.png", "dog.1.png"])
    cfg, paths = _local(tmp_path, source, task="binary", layout="file_names", label_pattern=CAT_DOG)
    train = tables.load_train_table(cfg, paths)
    assert dict(zip(train["id"], train["label"])) == {"cat.0": "cat", "cat.1": "cat", "dog.0": "dog", "dog.1": "dog"}
    kept = make_config(task="binary", data={**cfg.data.model_dump(mode="json"), "ids_have_extension": True})
    assert "cat.0.png" in set(tables.read_train_table(kept, paths)[0]["id"])


@pytest.mark.parametrize("names, message", [
    (["cat.0.png", "dog.0.png", "bird.0.png"],
     r"train/bird\.0\.png: data\.label_pattern '\^\(\?P<label>cat\|dog\)\\+\.' does not match this file name"),
    (["Cat_0.png", "Dog_0.png"], r"train: data\.label_pattern .* matches none of its 2 \.png file names, e\.g\. Cat_0\.png"),
])
def test_file_name_pattern_misses_are_one_line(names: list[str], message: str, tmp_path: Path) -> None:
    source = _cats_dogs(tmp_path / "competition", names)
    cfg, paths = _local(tmp_path, source, task="binary", layout="file_names", label_pattern=CAT_DOG)
    with pytest.raises(DataError, match=message):
        tables.load_train_table(cfg, paths)
    assert [p for p in _problems(cfg, paths) if re.search(message, p)]


# --- class folders with a flat test folder ---------------------------------------------------------


def _paddy(folder: Path, loose: bool = False) -> Path:
    """paddy's shape: train_images/<label>/<image_id>, test_images/<image_id>, train.csv aside."""
    for i, label in enumerate(["blast", "normal", "blast", "normal"]):
        _png(folder / "train_images" / ("" if loose else label) / f"{100 + i}.png")
    for i in (200, 201):
        _png(folder / "test_images" / f"{i}.png")
    _csv(folder / "sample_submission.csv", pd.DataFrame({"image_id": ["200.png", "201.png"], "label": "blast"}))
    return folder


def _paddy_config(tmp_path: Path, source: Path):
    return _local(tmp_path, source, layout="folders", id_column="image_id", train_dir="train_images",
                  test_dir="test_images", ids_have_extension=True)


def test_class_folders_with_a_flat_test_folder(tmp_path: Path, caplog) -> None:
    cfg, paths = _paddy_config(tmp_path, _paddy(tmp_path / "competition"))
    caplog.set_level(logging.WARNING)
    train = tables.load_train_table(cfg, paths)
    # The id is the image's file name, as the competition calls it (not class/stem).
    assert dict(zip(train["id"], train["label"])) == {"100.png": "blast", "101.png": "normal",
                                                      "102.png": "blast", "103.png": "normal"}
    assert tables.load_test_table(cfg, paths)["id"].tolist() == ["200.png", "201.png"]
    assert check.run(cfg, paths).problems == [] and "not used" not in caplog.text


def test_a_file_name_in_two_class_folders_is_a_repeated_id(tmp_path: Path) -> None:
    source = _paddy(tmp_path / "competition")
    _png(source / "train_images" / "normal" / "100.png")  # 100.png is also in blast/
    cfg, paths = _paddy_config(tmp_path, source)
    with pytest.raises(DataError, match=re.escape(str(paths.data / "train_images")) + r": row \d+ repeats id '100\.png'"):
        tables.load_train_table(cfg, paths)


def test_images_outside_class_folders_are_one_line(tmp_path: Path) -> None:
    cfg, paths = _paddy_config(tmp_path, _paddy(tmp_path / "competition", loose=True))
    message = (re.escape(str(paths.data / "train_images")) + r": layout 'folders' expects one sub-folder per "
               r"class, but the 4 \.png image\(s\) sit directly in it, e\.g\. 100\.png")
    with pytest.raises(DataError, match=message):
        tables.load_train_table(cfg, paths)
    assert [p for p in _problems(cfg, paths) if re.match(message, p)]


# --- image readers -----------------------------------------------------------------------------------


def test_sixteen_bit_png_is_scaled_by_its_range(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 256, 32896, 65535]], dtype=np.uint16)).save(path)
    assert images.load_rgb(path)[0, :, 0].tolist() == [0, 1, 128, 255]  # 65535 -> 255, 256 stays dark
    assert images.load_rgb(path).dtype == np.uint8


def test_tiff_images_are_read(tmp_path: Path) -> None:
    import tifffile

    rgb = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "plain.tif")
    assert (images.load_rgb(tmp_path / "plain.tif") == rgb).all()
    # Float RGB: beyond Pillow, read through tifffile; a float image is scaled by its own range.
    tifffile.imwrite(tmp_path / "float.tif", np.array([[[0, 0.5, 1.0], [0.25, 0.25, 0.25]]], dtype=np.float32),
                     photometric="rgb")
    assert images.load_rgb(tmp_path / "float.tif").tolist() == [[[0, 128, 255], [64, 64, 64]]]
    assert images.inspect(tmp_path / "float.tif") == images.ImageInfo((2, 1), "TIFF")
    # Float grey: Pillow reads it, and it is scaled the same way (not cast to 0 and 1).
    tifffile.imwrite(tmp_path / "grey.tif", np.array([[0, 0.5, 1.0]], dtype=np.float32))
    assert images.load_rgb(tmp_path / "grey.tif")[0, :, 0].tolist() == [0, 128, 255]
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "broken.tif")) + ": cannot read image: "):
        images.load_rgb(tmp_path / "broken.tif")


def _dicom(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME1", window: bool = True) -> Path:
    """A CT-like DICOM: 12 bits stored, HU = 2 * stored - 1000, a window of [-1000, 1000]."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    if window:
        ds.WindowCenter, ds.WindowWidth = 0, 2000
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_is_rescaled_windowed_and_monochrome1_inverted(tmp_path: Path) -> None:
    stored = np.array([[0, 500, 1000, 4000]])  # HU -1000, 0, 1000, 7000
    # The window [-1000, 1000] spans 0..255: -1000 -> 0, 0 -> 127.56 -> 128, beyond 1000 -> 255;
    # MONOCHROME1 shows low values white, so each is inverted.
    windowed = images.load_rgb(_dicom(tmp_path / "ct.dcm", stored))
    assert windowed.shape == (1, 4, 3) and windowed.dtype == np.uint8
    assert windowed[0, :, 0].tolist() == [255, 127, 0, 0]
    # No window: the image's own range (HU -1000..7000), MONOCHROME2 as stored.
    plain = images.load_rgb(_dicom(tmp_path / "plain.dcm", stored, "MONOCHROME2", window=False))
    assert plain[0, :, 0].tolist() == [0, 32, 64, 255]
    # A DICOM without the .dcm ending is still recognised by its preamble.
    (tmp_path / "noext").write_bytes((tmp_path / "ct.dcm").read_bytes())
    assert (images.load_rgb(tmp_path / "noext") == windowed).all()


def test_jpeg_compressed_colour_dicom_is_rgb(tmp_path: Path) -> None:
    """siim-isic ships its DICOMs as baseline JPEG in YBR_FULL_422: decoded, converted to RGB."""
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid

    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, :8], rgb[:, 8:] = (200, 30, 30), (20, 40, 220)
    jpeg = io.BytesIO()
    Image.fromarray(rgb).save(jpeg, format="JPEG", quality=95)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([jpeg.getvalue()])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.save_as(tmp_path / "ISIC_0000000.dcm", enforce_file_format=True)
    decoded = images.load_rgb(tmp_path / "ISIC_0000000.dcm")
    assert decoded.shape == (16, 16, 3) and decoded.dtype == np.uint8
    assert (np.abs(decoded.astype(int) - rgb).max(axis=2)[:, [2, 13]] < 8).all()  # JPEG's loss aside


def test_unreadable_dicom_is_one_line_and_a_check_problem(tmp_path: Path) -> None:
    source = tmp_path / "competition"
    _csv(source / "train.csv", pd.DataFrame({"image_name": ["a", "b", "c", "d"], "target": [0, 1, 0, 1]}))
    _csv(source / "sample_submission.csv", pd.DataFrame({"image_name": ["e"], "target": 0}))
    for folder in ("train", "test"):
        (source / folder).mkdir()
    for name in "abc":
        _dicom(source / "train" / f"{name}.dcm", np.full((4, 4), 100))
    _dicom(source / "test" / "e.dcm", np.full((4, 4), 100))
    (source / "train" / "d.dcm").write_bytes(b"\x00" * 200)
    cfg, paths = _local(tmp_path, source, task="binary", id_column="image_name", label_column="target",
                        extension=".dcm")
    with pytest.raises(DataError, match=re.escape(str(paths.data / "train" / "d.dcm")) + ": cannot read DICOM image"):
        images.load_rgb(paths.data / "train" / "d.dcm")
    problems = _problems(cfg, paths)
    assert len(problems) == 1 and problems[0].startswith(f"{paths.data / 'train' / 'd.dcm'}: cannot read DICOM image")


# --- the positive class of a binary task -------------------------------------------------------------


def test_positive_class_goes_second() -> None:
    labels = pd.Series(["none", "cactus", "none"])
    with pytest.raises(ConfigError, match=r"^binary task: say which class is positive with positive_class: "
                                          r"cactus\|none$"):
        Classes.from_labels(labels, "binary")
    assert Classes.from_labels(labels, "binary", positive="cactus").names == ("none", "cactus")
    assert Classes.from_labels(labels, "binary", positive="none").names == ("cactus", "none")
    assert Classes.from_labels(pd.Series(["1", "0"]), "binary").names == ("0", "1")
    assert Classes.from_labels(pd.Series(["True", "False"]), "binary").names == ("False", "True")
    with pytest.raises(ConfigError, match="positive_class = 'tree' is not a class"):
        Classes.from_labels(labels, "binary", positive="tree")


def test_positive_class_from_the_key_or_the_sample_submission(tmp_path: Path) -> None:
    source = _cats_dogs(tmp_path / "competition", ["cat.0.png", "dog.0.png", "cat.1.png", "dog.1.png"])
    cfg, paths = _local(tmp_path, source, task="binary", layout="file_names", label_pattern=CAT_DOG)
    labels = tables.load_train_table(cfg, paths)["label"]
    # The sample submission's column is 'label': it names no class.
    with pytest.raises(ConfigError, match=r"positive_class: cat\|dog"):
        tables.classes(cfg, paths, labels)
    assert any("say which class is positive" in p for p in _problems(cfg, paths))
    chosen = make_config(task="binary", positive_class="cat", data=cfg.data.model_dump(mode="json"))
    assert tables.classes(chosen, paths, labels).names == ("dog", "cat")
    assert "  positive class: cat" in check.run(chosen, paths).summary
    _csv(paths.data / "sample_submission.csv", pd.DataFrame({"id": [1, 2], "dog": 0.5}))
    assert tables.classes(cfg, paths, labels).names == ("cat", "dog")


def test_auc_and_binary_submission_follow_the_positive_class() -> None:
    """'cactus' sorts first, yet it is the positive class: its probability is scored and submitted."""
    classes = Classes.from_labels(pd.Series(["none", "cactus", "none"]), "binary", positive="cactus")
    proba = pd.DataFrame([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], columns=list(classes.names), index=["a", "b", "c"])
    built = submit.build(proba, pd.DataFrame({"id": ["a", "b", "c"], "has_cactus": "0"}), "id", "binary")
    assert built["has_cactus"].tolist() == [0.1, 0.8, 0.4]
    y = classes.encode(pd.Series(["none", "cactus", "none"]))
    assert y.tolist() == [0, 1, 0] and metrics.get("roc_auc")(y, proba.to_numpy()) == 1.0


def test_positive_class_is_only_for_binary_tasks() -> None:
    with pytest.raises(ConfigError, match=r"positive_class is for task 'binary', not 'multiclass'"):
        make_config(positive_class="cat")


# --- the keys ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data, message", [
    ({"layout": "file_names"}, "layout 'file_names' needs label_pattern"),
    ({"layout": "file_names", "label_pattern": "^(cat|dog)"}, r"needs a named group 'label'"),
    ({"layout": "file_names", "label_pattern": "^(?P<label>cat"}, r"not a regular expression"),
    ({"layout": "folders", "label_columns": ["a", "b"]}, "label_columns is for layout 'csv', not 'folders'"),
    ({"label_columns": ["a", "a"]}, "label columns must be distinct"),
])
def test_layout_keys_are_checked(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        make_config(data={"source": {"type": "local", "path": "x"}, **data})
    assert "\n" not in str(error.value)


def test_check_names_a_missing_group_column(tmp_path: Path) -> None:
    source = _cactus(tmp_path / "competition")
    cfg, paths = _local(tmp_path, source, task="binary", label_column="has_cactus", ids_have_extension=True)
    grouped = make_config(task="binary", data=cfg.data.model_dump(mode="json"),
                          folds={"k": 2, "strategy": "grouped", "group_column": "patient_id"})
    assert any("no group column 'patient_id' (folds.group_column)" in p for p in _problems(grouped, paths))


def test_download_and_check_from_the_command_line(tmp_path: Path, capsys) -> None:
    """A YAML alone: `foldstack download` lays out the competition, `foldstack check` lists what a
    binary task with unnamed classes lacks and exits non-zero; with positive_class it passes."""
    import yaml

    from foldstack import cli

    source = _cats_dogs(tmp_path / "competition", ["cat.0.png", "dog.0.png", "cat.1.png", "dog.1.png"])
    raw = make_config(task="binary", data={"source": {"type": "local", "path": str(source)}, "layout": "file_names",
                                           "label_pattern": CAT_DOG}).model_dump(mode="json", exclude_defaults=True)
    pipeline = tmp_path / "cats.yaml"
    root = ["--pipeline", str(pipeline), "--root", str(tmp_path / "root")]
    pipeline.write_text(yaml.safe_dump(raw))
    assert cli.main(["download", *root]) == 0
    capsys.readouterr()
    assert cli.main(["check", *root]) == 2
    out = capsys.readouterr().out
    assert "problems (1):\n  binary task: say which class is positive with positive_class: cat|dog" in out
    pipeline.write_text(yaml.safe_dump({**raw, "positive_class": "dog"}))
    assert cli.main(["check", *root]) == 0
    assert "train: 4 images in 2 classes (train)\n  per class: cat: 2, dog: 2\n  positive class: dog" in capsys.readouterr().out
