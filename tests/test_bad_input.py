"""Bad input and interruptions, one row per case: each either works, or fails with one line on
stderr naming the file, the row or the key (exit 2, no traceback), and leaves no half output.

Stages run in-process through ``foldstack.cli.main`` on a copy of the tiny digits competition.
The kill-mid-epoch-and-resume case is ``tests/test_train.py::test_killed_run_resumes``; the
predict stage's cases (a corrupt test image, fold weights missing or of another recipe, a bad
``--images`` folder) are in ``tests/test_predict.py``.
"""

from __future__ import annotations

import copy
import errno
import re
import shutil
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from foldstack import cli
from foldstack.core import files as io
from foldstack.core.errors import DataError
from foldstack.core.paths import Paths
from foldstack.data import images
from foldstack.pipeline import load_pipeline
from foldstack.stages import stack, submit

from conftest import TINY

# --- helpers -------------------------------------------------------------------------------------


class Competition:
    """A private copy of the tiny digits competition, its pipeline YAML and a CLI runner."""

    def __init__(self, root: Path, source: Paths, capsys: pytest.CaptureFixture[str]):
        self.root = root
        self.capsys = capsys
        self.paths = Paths.for_pipeline("tiny", root)
        shutil.copytree(source.data, self.paths.data)
        self.yaml = root / "tiny.yaml"
        self.write_yaml(copy.deepcopy(TINY))

    @property
    def data(self) -> Path:
        return self.paths.data

    def write_yaml(self, raw: dict) -> None:
        self.yaml.write_text(yaml.safe_dump(raw))

    def train_csv(self) -> pd.DataFrame:
        return pd.read_csv(self.data / "train.csv", dtype=str, keep_default_na=False)

    def image(self, row: int, split: str = "train") -> Path:
        table = self.train_csv() if split == "train" else pd.read_csv(self.data / "sample_submission.csv", dtype=str)
        return self.data / split / f"{table['id'][row]}.png"

    def run(self, stage: str) -> tuple[int, str, str]:
        """``foldstack <stage>``: exit status, stdout, stderr."""
        self.capsys.readouterr()
        code = cli.main([stage, "--pipeline", str(self.yaml), "--root", str(self.root)])
        out, err = self.capsys.readouterr()
        return code, out, err


def assert_one_line(code: int, err: str, pattern: str, status: int = 2) -> None:
    """Exit ``status``; stderr is one line matching ``pattern`` besides progress-bar redraws
    (tqdm's carriage returns and cursor-up escapes), and no traceback."""
    assert code == status, err
    lines = [line for line in err.split("\n") if line and not re.search(r"\r|\x1b\[A", line)]
    assert "Traceback" not in err and len(lines) == 1, err
    assert re.search(pattern, lines[0]), err


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture
def comp(tiny_digits, tmp_path: Path, capsys) -> Competition:
    return Competition(tmp_path, tiny_digits[1], capsys)


# --- images --------------------------------------------------------------------------------------


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height``: a decompression bomb that costs nothing."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _noise(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8))


def _truncated(fmt: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        _noise(32, 32).save(path, format=fmt)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return write


def _garbled(path: Path) -> None:
    _noise(32, 32).save(path, format="PNG")
    raw = bytearray(path.read_bytes())
    raw[60:80] = bytes(20)
    path.write_bytes(bytes(raw))


def _exif_rotated(path: Path) -> None:
    image = Image.new("RGB", (10, 6))
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(path, format="JPEG", exif=exif)


READABLE = {
    # case: (writer, the array load_rgb gives)
    "grayscale": (lambda p: Image.new("L", (8, 8), 7).save(p, format="PNG"), (8, 8, 3)),
    "rgba": (lambda p: Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(p, format="PNG"), (8, 8, 3)),
    "palette": (lambda p: Image.new("P", (8, 8), 3).save(p, format="PNG"), (8, 8, 3)),
    "16-bit png": (lambda p: Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(p, format="PNG"), (8, 8, 3)),
    "cmyk jpeg": (lambda p: Image.new("CMYK", (10, 6), (0, 255, 0, 0)).save(p, format="JPEG"), (6, 10, 3)),
    "exif-rotated jpeg": (_exif_rotated, (10, 6, 3)),  # stored 10 wide, shown 6 wide
    "very small (1x1)": (lambda p: Image.new("L", (1, 1), 200).save(p, format="PNG"), (1, 1, 3)),
    "another size (40x20)": (lambda p: _noise(40, 20).save(p, format="PNG"), (20, 40, 3)),
}

UNREADABLE = {
    # case: (writer, the reason after "cannot read image: ")
    "zero bytes": (lambda p: p.write_bytes(b""), "empty file"),
    "not an image": (lambda p: p.write_text("id,label\n"), "cannot identify image file"),
    "truncated png": (_truncated("PNG"), "image file is truncated"),
    "truncated jpeg": (_truncated("JPEG"), "Truncated File Read"),
    "corrupt png": (_garbled, "broken data stream"),
    "decompression bomb": (lambda p: _png_header_only(p, 20000, 20000),
                           r"too many pixels \(over 268,435,456\), refused as a possible decompression bomb"),
}


@pytest.mark.parametrize("case", READABLE)
def test_readable_image_becomes_rgb(case: str, tmp_path: Path) -> None:
    write, shape = READABLE[case]
    path = tmp_path / "image.img"
    write(path)
    array = images.load_rgb(path)
    assert array.dtype == np.uint8 and array.shape == shape
    assert images.resize(array, 16).shape == (16, 16, 3)  # mixed and tiny sizes all fit the cache
    assert images.inspect(path).size == Image.open(path).size


def test_readable_images_keep_their_content(tmp_path: Path) -> None:
    for case in ("rgba", "16-bit png", "cmyk jpeg"):
        READABLE[case][0](tmp_path / case)
    assert (images.load_rgb(tmp_path / "rgba") == 255).all()  # transparent -> white
    assert images.load_rgb(tmp_path / "16-bit png").max() == round(40000 * 255 / 65535)  # scaled, not clipped
    assert (np.abs(images.load_rgb(tmp_path / "cmyk jpeg").astype(int) - (255, 0, 255)) < 8).all()


@pytest.mark.parametrize("case", UNREADABLE)
def test_unreadable_image_is_one_line_naming_the_file(case: str, tmp_path: Path) -> None:
    write, reason = UNREADABLE[case]
    path = tmp_path / "x.png"
    write(path)
    for read in (images.load_rgb, images.inspect):
        with pytest.raises(DataError) as error:
            read(path)
        assert re.fullmatch(f"{re.escape(str(path))}: cannot read image: {reason}.*", str(error.value))
        assert "\n" not in str(error.value)


# --- tables (the folds stage reads and checks the train table) ---------------------------------------


def _rename_id(c: Competition) -> None:
    c.train_csv().rename(columns={"id": "image_id"}).to_csv(c.data / "train.csv", index=False)


def _drop_label(c: Competition) -> None:
    c.train_csv().drop(columns="label").to_csv(c.data / "train.csv", index=False)


def _edit(change: Callable[[pd.DataFrame], pd.DataFrame], **to_csv) -> Callable[[Competition], None]:
    def apply(c: Competition) -> None:
        change(c.train_csv()).to_csv(c.data / "train.csv", index=False, **to_csv)
    return apply


def _with_row(image_id: str, label: str, copy_image: bool = True) -> Callable[[Competition], None]:
    def apply(c: Competition) -> None:
        if copy_image:
            shutil.copy(c.image(0), c.data / "train" / f"{image_id}.png")
        table = c.train_csv()
        table.loc[len(table)] = [image_id, label]
        table.to_csv(c.data / "train.csv", index=False)
    return apply


def _relabel(frame: pd.DataFrame, old: str, new: str) -> pd.DataFrame:
    return frame.assign(label=frame["label"].replace(old, new))


TABLES = {
    # case: (how to spoil train.csv, expected stderr, or None where the stage works)
    "missing id column": (_rename_id, r"train.csv: missing column 'id'; columns are 'image_id', 'label'$"),
    "missing label column": (_drop_label, r"train.csv: missing column 'label'; columns are 'id'$"),
    "duplicate id": (_edit(lambda f: pd.concat([f, f.iloc[[5]]], ignore_index=True)),
                     r"train.csv: row 122 repeats id 'digit_\d+'$"),
    "id without an image": (_with_row("ghost", "3", copy_image=False),
                            r"train.csv: row 122 \(id 'ghost'\): image .*ghost.png not found$"),
    "empty label": (_edit(lambda f: f.assign(label=f["label"].mask(f.index == 3, ""))),
                    r"train.csv: row 5 \(id 'digit_\d+'\) has an empty label$"),
    "NaN labels": (_edit(lambda f: f.assign(label=f["label"].mask(f.index >= 100, "NaN"))),
                   r"train.csv: row 102 \(id 'digit_\d+'\) has an empty label \(and 19 more\)$"),
    "class rarer than folds": (_with_row("lonely", "Z"), r"class 'Z' has 1 example\(s\), fewer than the 2 folds"),
    "empty train set": (_edit(lambda f: f.iloc[:0]), r"train.csv: the train set is empty$"),
    "zero-byte train.csv": (lambda c: (c.data / "train.csv").write_bytes(b""),
                            r"train.csv: cannot read train table: No columns to parse from file$"),
    "ragged row": (lambda c: (c.data / "train.csv").open("a").write("x,1,extra\n"),
                   r"train.csv: cannot read train table: Error tokenizing data. C error: Expected 2 fields in "
                   r"line 122, saw 3$"),
    "utf-8 BOM": (_edit(lambda f: f, encoding="utf-8-sig"), None),
    "latin-1": (_edit(lambda f: _relabel(f, "3", "três"), encoding="latin-1"), None),
    "images without a row": (_edit(lambda f: f.iloc[1:]), None),
}


@pytest.mark.parametrize("case", TABLES)
def test_train_table(case: str, comp: Competition, caplog) -> None:
    spoil, expected = TABLES[case]
    rows = len(comp.train_csv())
    spoil(comp)
    code, _, err = comp.run("folds")
    if expected is None:
        assert code == 0, err
        assert len(pd.read_csv(comp.paths.folds)) == rows - (case == "images without a row")
    else:
        assert_one_line(code, err, expected)
        assert not comp.paths.folds.exists()  # nothing half-done for a later stage to trust
    if case == "latin-1":
        assert "três" in set(pd.read_csv(comp.paths.folds, dtype=str)["label"])
    if case == "images without a row":
        assert "1 image(s) have no row in train.csv and are not used" in caplog.text


def test_test_labels_unseen_in_training_warn_and_still_score(comp: Competition, caplog) -> None:
    cfg = load_pipeline(comp.yaml)
    solution = pd.read_csv(comp.data / "solution.csv", dtype=str)
    solution.loc[:4, "label"] = "11"  # a class no training row has
    solution.to_csv(comp.data / "solution.csv", index=False)
    truth = solution.set_index("id")["label"]
    assert comp.run("folds")[0] == 0  # the class order submit scores by is written with the folds
    # A perfect model on the known classes: only the 5 unseen rows can be wrong.
    proba = pd.DataFrame(0.0, index=truth.index, columns=[str(d) for d in range(10)])
    for image_id, label in truth.items():
        proba.loc[image_id, label if label != "11" else "0"] = 1.0
    assert submit._local_score(cfg, comp.paths, proba) == pytest.approx(1 - 5 / len(truth))
    assert "label(s) 11 never appear in training; their rows count as wrong" in caplog.text
    code, out, _ = comp.run("check")
    assert code == 0 and "solution.csv: label(s) '11' never appear in training" in out


def test_sample_submission_with_a_bom_and_latin1_is_read(comp: Competition) -> None:
    sample = comp.data / "sample_submission.csv"
    frame = pd.read_csv(sample, dtype=str)
    frame.to_csv(sample, index=False, encoding="utf-8-sig")
    assert list(submit.read_sample(sample, "id").columns) == ["id", "label"]
    frame.assign(label="é").to_csv(sample, index=False, encoding="latin-1")
    assert set(submit.read_sample(sample, "id")["label"]) == {"é"}


# --- config ------------------------------------------------------------------------------------


def _model(**change) -> Callable[[dict], None]:
    return lambda raw: raw["models"][0].update(change)


CONFIGS = {
    # case: (change to the tiny YAML, expected stderr after the file name)
    "unknown key": (lambda r: r.update(colour="blue"), "colour = 'blue': unknown key"),
    "wrong type": (_model(epochs="ten"), "models.0.epochs = 'ten': Input should be a valid integer"),
    "unknown backbone": (_model(backbone="resnet9000"), "models.0.backbone = 'resnet9000': Value error, unknown backbone"),
    "unknown metric": (lambda r: r.update(metric="vibes"), "metric = 'vibes': Value error, unknown metric"),
    "unknown regime": (_model(regime="magic"), "models.0.regime = 'magic': Input should be 'features'"),
    "image size too small for the backbone": (
        _model(image_size=16), "models.0.image_size = 16: Value error, backbone 'mobilenet_v2' needs at least 32"),
}


@pytest.mark.parametrize("case", CONFIGS)
def test_config_mistake_is_one_line_naming_the_key(case: str, comp: Competition) -> None:
    change, expected = CONFIGS[case]
    raw = copy.deepcopy(TINY)
    change(raw)
    comp.write_yaml(raw)
    code, _, err = comp.run("check")
    assert_one_line(code, err, f"^foldstack check: error: {re.escape(str(comp.yaml))}: {re.escape(expected)}")


def test_missing_pipeline_file(comp: Competition) -> None:
    comp.yaml.unlink()
    code, _, err = comp.run("check")
    assert_one_line(code, err, r"tiny.yaml: pipeline file not found$")


# --- runs: interruptions, a full disk, reruns, stale inputs ----------------------------------------


def test_ctrl_c_is_one_line_and_exit_130(comp: Competition, monkeypatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("foldstack.stages.folds.run", interrupted)
    code, _, err = comp.run("folds")
    assert_one_line(code, err, r"foldstack folds: interrupted; finished work is kept, run it again to resume$",
                    status=130)


def _half_written_then(error: BaseException):
    """A ``to_parquet`` / ``to_csv`` that writes half a file and then fails with ``error``."""
    def write(frame: pd.DataFrame, path, *args, **kwargs) -> None:
        Path(path).write_bytes(b"PAR1 half a file")
        raise error
    return write


def test_interrupted_oof_write_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    oof = tmp_path / "oof" / "m.parquet"
    io.write_parquet(oof, pd.DataFrame({"id": ["a"], "fold": [0], "0": [1.0]}))
    before = oof.read_bytes()
    monkeypatch.setattr(pd.DataFrame, "to_parquet", _half_written_then(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        io.write_parquet(oof, pd.DataFrame({"id": ["b"], "fold": [1], "0": [0.5]}))
    assert oof.read_bytes() == before and no_temporaries(tmp_path)


def test_disk_full_keeps_the_old_file_and_says_so(comp: Competition, monkeypatch) -> None:
    assert comp.run("folds")[0] == 0
    before = comp.paths.folds.read_bytes()
    full = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pd.DataFrame, "to_csv", _half_written_then(full))
    code, _, err = comp.run("folds")
    assert_one_line(code, err, rf"foldstack folds: error: {re.escape(str(comp.paths.folds))}: cannot write: "
                               r"the disk is full \(no space left on device\); free some space and run it again$")
    assert comp.paths.folds.read_bytes() == before and no_temporaries(comp.root)


def test_disk_full_outside_an_atomic_write_is_one_line_too(comp: Competition, monkeypatch) -> None:
    def checkpoint(*args, **kwargs):
        raise OSError(errno.EDQUOT, "Disk quota exceeded", "/somewhere/best.weights.h5")

    monkeypatch.setattr("foldstack.stages.folds.run", checkpoint)
    code, _, err = comp.run("folds")
    assert_one_line(code, err, r"error: /somewhere/best.weights.h5: cannot write: the disk is full")


def _stack_inputs(comp: Competition) -> None:
    """Uniform OOF and test predictions of the tiny pipeline's model, as `train` writes them."""
    folds = pd.read_csv(comp.paths.folds, dtype={"id": str, "label": str})
    test_ids = pd.read_csv(comp.data / "sample_submission.csv", dtype=str)["id"]
    classes = [str(d) for d in range(10)]
    io.write_parquet(comp.paths.oof / "m.parquet", folds[["id", "fold"]].assign(**{c: 0.1 for c in classes}))
    io.write_parquet(comp.paths.test / "m.parquet", pd.DataFrame({"id": test_ids}).assign(**{c: 0.1 for c in classes}))


def test_interrupted_stack_keeps_the_previous_output_and_reruns(comp: Competition, monkeypatch) -> None:
    raw = copy.deepcopy(TINY)
    raw["stack"] = {"candidates": ["mean"]}
    comp.write_yaml(raw)
    assert comp.run("folds")[0] == 0
    _stack_inputs(comp)
    assert comp.run("stack")[0] == 0
    before = {p: p.read_bytes() for p in comp.paths.stack.rglob("*") if p.is_file()}

    raw["stack"] = {"candidates": ["mean", "best_single"]}  # new settings: the CV runs again
    comp.write_yaml(raw)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stack.plots, "confusion", killed)  # the last write of the stage
    assert comp.run("stack")[0] == 130
    assert {p: p.read_bytes() for p in comp.paths.stack.rglob("*") if p.is_file()} == before
    assert no_temporaries(comp.root) and not list(comp.paths.artifacts.glob(".stack*"))
    monkeypatch.undo()
    assert comp.run("stack")[0] == 0  # the rerun completes


def test_rerun_after_a_failed_stage(comp: Competition) -> None:
    good = comp.train_csv()
    pd.concat([good, good.iloc[[0]]]).to_csv(comp.data / "train.csv", index=False)
    assert comp.run("folds")[0] == 2 and not comp.paths.folds.exists()
    good.to_csv(comp.data / "train.csv", index=False)
    assert comp.run("folds")[0] == 0 and len(pd.read_csv(comp.paths.folds)) == len(good)


def _folds_of_other_k(comp: Competition) -> None:
    raw = copy.deepcopy(TINY)
    raw["folds"] = {"k": 3, "seed": 0}
    comp.write_yaml(raw)  # changed after `folds` ran with k = 2


def _relabel_after_folds(comp: Competition) -> None:
    _edit(lambda f: f.assign(label=f["label"].mask(f.index == 0, "7")))(comp)


TRAIN_INPUTS = {
    # case: (what changes after `folds`, expected stderr of `train`)
    "folds.csv from another folds.k": (_folds_of_other_k, r"folds.csv: holds folds \[0, 1\] but folds.k = 3; "
                                                          r"run `make folds` again$"),
    "label edited after folds": (_relabel_after_folds, r"folds.csv: id 'digit_\d+' has label '\d' but the train "
                                                       r"table says '7'; run `make folds` again$"),
}


@pytest.mark.parametrize("case", TRAIN_INPUTS)
def test_train_checks_its_inputs_before_training(case: str, comp: Competition) -> None:
    assert comp.run("folds")[0] == 0
    if TRAIN_INPUTS[case][0] is _relabel_after_folds:
        assert pd.read_csv(comp.paths.folds, dtype=str)["label"][0] != "7"
    TRAIN_INPUTS[case][0](comp)
    code, _, err = comp.run("train")
    assert_one_line(code, err, TRAIN_INPUTS[case][1])
    assert not comp.paths.oof.exists() and no_temporaries(comp.root)


# --- foldstack check -----------------------------------------------------------------------------


def test_check_passes_on_good_data(comp: Competition) -> None:
    code, out, err = comp.run("check")
    assert code == 0, err
    assert "train: 120 images in 10 classes (train.csv)" in out
    assert "test: 30 images (sample_submission.csv)" in out
    assert "image sizes: 1 distinct, most common 8x8 (150)" in out and "image modes: L (150)" in out
    assert out.rstrip().endswith("problems: none")


def test_check_lists_every_problem(comp: Competition) -> None:
    corrupt, empty = comp.image(0), comp.image(1)
    corrupt.write_bytes(corrupt.read_bytes()[:-40])  # cut inside the pixel data
    empty.write_bytes(b"")
    table = comp.train_csv()
    pd.concat([table, table.iloc[[2]]], ignore_index=True).to_csv(comp.data / "train.csv", index=False)
    (comp.data / "test" / "stray.png").write_bytes(b"")  # in no row: a warning, never decoded
    code, out, err = comp.run("check")
    assert_one_line(code, err, r"foldstack check: error: 3 problem\(s\) found in .*; fix them before training")
    problems = out[out.index("problems (3):"):].splitlines()[1:]
    assert problems == [
        f"  {comp.data / 'train.csv'}: row 122 repeats id {table['id'][2]!r}",
        f"  {corrupt}: cannot read image: image file is truncated",
        f"  {empty}: cannot read image: empty file",
    ]
    assert "test: 1 image(s) have no row in sample_submission.csv and are not used, e.g. stray.png" in out
