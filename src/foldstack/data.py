"""The competition's files: fetching them (`download`) and reading the train and test tables.

A train table is ``id, label, path``; a test table is ``id, path`` with ids from the sample
submission, in its order. Readers check what they read and raise :class:`DataError` naming the
file, the row or the column.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from foldstack.config import DataConfig, PipelineConfig
from foldstack.errors import DataError, one_line
from foldstack.io import atomic_dir, write_csv, write_json
from foldstack.paths import Paths

log = logging.getLogger(__name__)

MARKER = ".foldstack-download.json"


# --- download ------------------------------------------------------------------------------------


def download(cfg: PipelineConfig, paths: Paths, force: bool = False) -> Path:
    """Lay the competition out under ``paths.data`` as the competition ships it.

    A completed download leaves a marker listing its files; a later call with the marker in place
    does nothing unless ``force``. The folder is built beside its final name and renamed, so an
    interrupted download never looks complete.
    """
    source = cfg.data.source
    if source.type in ("kaggle_competition", "kaggle_dataset"):
        from foldstack import kaggle  # the kaggle client is only needed for these sources

        return kaggle.download(cfg, paths, force=force)
    if not force and up_to_date(paths.data, source):
        log.info("%s is up to date (remove it or pass --force to fetch again)", paths.data)
        return paths.data
    writers = {"embedded": _write_embedded, "local": _copy_local}
    with atomic_dir(paths.data) as tmp:
        writers[source.type](cfg, tmp)
        write_marker(tmp, source)
    return paths.data


def write_marker(folder: Path, source: Any) -> None:
    """Record a finished download of ``source`` in ``folder``: the source and every file's size."""
    write_json(folder / MARKER, {"source": source.model_dump(mode="json"), "files": _file_sizes(folder)})


def up_to_date(folder: Path, source: Any) -> bool:
    """Whether ``folder`` holds a finished download of ``source`` that nobody has changed since."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if marker.get("source") != source.model_dump(mode="json"):
        return False
    for name, size in marker.get("files", {}).items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def _file_sizes(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` (but the marker) as a relative POSIX path and its size."""
    return {path.relative_to(folder).as_posix(): path.stat().st_size
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MARKER}


def _copy_local(cfg: PipelineConfig, target: Path) -> None:
    source = Path(cfg.data.source.path).expanduser()
    if not source.is_dir():
        raise DataError(f"data.source.path = {str(source)!r}: folder not found")
    shutil.copytree(source, target, dirs_exist_ok=True)


def _write_embedded(cfg: PipelineConfig, target: Path) -> None:
    writers = {"digits": write_digits}
    writers[cfg.data.source.dataset](target, limit=cfg.data.source.limit)


def write_digits(target: Path, limit: int | None = None, seed: int = 0) -> None:
    """scikit-learn's 1,797 8x8 digits as a Kaggle competition: PNGs, train.csv, sample submission.

    The images stay 8x8 grayscale, their 17 grey levels (0-16) spread over 0-255. A fixed,
    stratified 80/20 split makes the test set; its answers go to ``solution.csv``.
    """
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target
    index = np.arange(len(labels))
    if limit is not None and limit < len(index):
        index, _ = train_test_split(index, train_size=limit, stratify=labels, random_state=seed)
        index = np.sort(index)
    train_idx, test_idx = train_test_split(index, test_size=0.2, stratify=labels[index], random_state=seed)
    for split, split_idx in (("train", np.sort(train_idx)), ("test", np.sort(test_idx))):
        folder = target / split
        folder.mkdir(parents=True)
        for i in split_idx:
            Image.fromarray(images[i], mode="L").save(folder / f"{_digit_id(i)}.png")
    train = pd.DataFrame({"id": [_digit_id(i) for i in np.sort(train_idx)], "label": labels[np.sort(train_idx)]})
    test_ids = [_digit_id(i) for i in np.sort(test_idx)]
    write_csv(target / "train.csv", train)
    write_csv(target / "sample_submission.csv", pd.DataFrame({"id": test_ids, "label": 0}))
    write_csv(target / "solution.csv", pd.DataFrame({"id": test_ids, "label": labels[np.sort(test_idx)]}))


def _digit_id(index: int) -> str:
    return f"digit_{index:04d}"


# --- reading the tables --------------------------------------------------------------------------


def read_csv(path: Path, what: str) -> pd.DataFrame:
    """A CSV read as strings (ids like '007' stay '007'); a BOM is dropped."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        except UnicodeDecodeError:  # not UTF-8: latin-1 decodes any byte, as Excel often writes
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="latin-1")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataError(f"{path}: cannot read {what}: {one_line(str(error))}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def require_columns(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column {', '.join(repr(c) for c in missing)}; "
                        f"columns are {', '.join(repr(c) for c in frame.columns)}")


def load_train_table(cfg: PipelineConfig, paths: Paths) -> pd.DataFrame:
    """``id, label, path`` for every training image, checked: unique ids, labels, files present."""
    table, source = read_train_table(cfg, paths)
    if table.empty:
        raise DataError(f"{source}: the train set is empty")
    raise_first(train_problems(table, source))
    _warn_unlisted(cfg.data, table, paths.data / cfg.data.train_dir, source)
    return table


def read_train_table(cfg: PipelineConfig, paths: Paths) -> tuple[pd.DataFrame, Path]:
    """The train table as written, unchecked, and the file (or folder) it comes from."""
    data = cfg.data
    if data.layout == "folders":
        return _train_from_folders(data, paths.data), paths.data / data.train_dir
    return _train_from_csv(data, paths.data), paths.data / data.train_csv


def _train_from_csv(data: DataConfig, root: Path) -> pd.DataFrame:
    path = root / data.train_csv
    frame = read_csv(path, "train table")
    require_columns(frame, [data.id_column, data.label_column], path)
    ids = frame[data.id_column].str.strip()
    return pd.DataFrame({
        "id": ids,
        "label": frame[data.label_column].str.strip(),
        "path": [str(_image_path(data, root / data.train_dir, i)) for i in ids],
    })


def _train_from_folders(data: DataConfig, root: Path) -> pd.DataFrame:
    folder = root / data.train_dir
    if not folder.is_dir():
        raise DataError(f"{folder}: train folder not found")
    rows = [
        {"id": f"{class_dir.name}/{image.stem}", "label": class_dir.name, "path": str(image)}
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir())
        for image in sorted(class_dir.glob(f"*{data.extension}"))
    ]
    return pd.DataFrame(rows, columns=["id", "label", "path"])


def _image_path(data: DataConfig, folder: Path, image_id: str) -> Path:
    return folder / (image_id if data.ids_have_extension else f"{image_id}{data.extension}")


# --- checks: each returns one message per bad row, grouped by kind --------------------------------

#: What a label cell holds when it was left empty (``keep_default_na=False`` keeps these as text).
EMPTY_LABELS = ("", "nan", "NaN", "None")

Problems = list[list[str]]


def train_problems(table: pd.DataFrame, source: Path) -> Problems:
    """Empty or repeated ids, empty labels, missing images of a train table (rows counted as in
    the CSV: the header is row 1)."""
    empty = table.index[table["label"].isin(EMPTY_LABELS)]
    labels = [f"{source}: row {i + 2} (id {table['id'][i]!r}) has an empty label" for i in empty]
    return [*id_problems(table, source), labels, file_problems(table, source)]


def id_problems(table: pd.DataFrame, source: Path) -> Problems:
    """Rows with an empty id, and rows repeating an earlier row's id."""
    return [
        [f"{source}: row {i + 2} has an empty id" for i in table.index[table["id"] == ""]],
        [f"{source}: row {i + 2} repeats id {table['id'][i]!r}" for i in table.index[table["id"].duplicated()]],
    ]


def file_problems(table: pd.DataFrame, source: Path) -> list[str]:
    """Rows whose image file does not exist."""
    return [f"{source}: row {i + 2} (id {table['id'][i]!r}): image {path} not found"
            for i, path in zip(table.index, table["path"]) if not Path(path).is_file()]


def unlisted_warning(data: DataConfig, table: pd.DataFrame, folder: Path, source: Path) -> str | None:
    """A warning if images in ``folder`` have no row in ``table`` (never used: harmless, yet often
    the sign of a wrong id column or extension), else None."""
    listed = set(table["path"])
    unlisted = sorted(p for p in folder.glob(f"*{data.extension}") if str(p) not in listed) if folder.is_dir() else []
    if not unlisted:
        return None
    return (f"{folder}: {len(unlisted)} image(s) have no row in {source.name} and are not used, "
            f"e.g. {unlisted[0].name}")


def _warn_unlisted(data: DataConfig, table: pd.DataFrame, folder: Path, source: Path) -> None:
    warning = unlisted_warning(data, table, folder, source)
    if warning:
        log.warning(warning)


def raise_first(problems: Problems) -> None:
    """Raise a DataError with the first problem of the first kind that has any."""
    for kind in problems:
        if kind:
            raise DataError(kind[0] + _and_more(len(kind)))


def _and_more(count: int) -> str:
    return f" (and {count - 1} more)" if count > 1 else ""


def load_test_table(cfg: PipelineConfig, paths: Paths) -> pd.DataFrame:
    """``id, path`` for every test image, in the sample submission's order."""
    table, source = read_test_table(cfg, paths)
    raise_first([*id_problems(table, source), file_problems(table, source)])
    _warn_unlisted(cfg.data, table, paths.data / cfg.data.test_dir, source)
    return table


def read_test_table(cfg: PipelineConfig, paths: Paths) -> tuple[pd.DataFrame, Path]:
    """``id, path`` from the sample submission, unchecked, and the sample submission's path."""
    data = cfg.data
    path = paths.data / data.sample_submission
    frame = read_csv(path, "sample submission")
    require_columns(frame, [data.id_column], path)
    ids = frame[data.id_column].str.strip()
    return pd.DataFrame({"id": ids, "path": [str(_image_path(data, paths.data / data.test_dir, i)) for i in ids]}), path


def class_names(labels: pd.Series, task: str) -> list[str]:
    """The classes in the order every prediction file uses: sorted, numerically when all are numbers."""
    # A multilabel row may hold no label at all; explode turns it into NaN, not a class.
    values = labels.str.split().explode().dropna() if task == "multilabel" else labels
    unique = sorted(set(values.astype(str)))
    if all(_is_number(v) for v in unique):
        unique.sort(key=float)
    return unique


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def label_matrix(labels: pd.Series, classes: list[str], task: str) -> np.ndarray:
    """Targets as the model sees them: class indices, or a 0/1 matrix for multilabel."""
    position = {name: i for i, name in enumerate(classes)}
    if task == "multilabel":
        matrix = np.zeros((len(labels), len(classes)), dtype=np.float32)
        for row, text in enumerate(labels):
            matrix[row, [position[name] for name in text.split()]] = 1.0
        return matrix
    return np.array([position[str(name)] for name in labels], dtype=np.int64)
