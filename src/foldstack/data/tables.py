"""The competition's tables: the train table and the test table, read and checked.

A train table is ``id, label, path``; a test table is ``id, path`` with ids from the sample
submission, in its order. Readers check what they read and raise :class:`DataError` naming the
file, the row or the column.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from foldstack.core.config import DataConfig, PipelineConfig
from foldstack.core.errors import DataError, one_line
from foldstack.core.paths import Paths

log = logging.getLogger(__name__)


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
