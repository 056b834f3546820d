"""The competition's tables: the train table and the test table, read and checked.

A train table is ``id, label, path`` whatever the layout (a label column, one-hot columns, class
folders, file names); a test table is ``id, path`` with ids from the test table or the sample
submission, in its order. Readers check what they read and raise :class:`DataError` naming the
file, the row or the column.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from foldstack.core.config import DataConfig, ExtraData, LayoutConfig, PipelineConfig, TableColumns
from foldstack.core.errors import DataError, one_line
from foldstack.core.paths import Paths
from foldstack.data.labels import SEPARATOR, Classes, FineClasses, join_labels, split_labels

log = logging.getLogger(__name__)


# --- reading the tables --------------------------------------------------------------------------


def read_csv(path: Path, what: str, lists: bool = False) -> pd.DataFrame:
    """A CSV read as strings (ids like '007' stay '007'); a BOM is dropped. A ``.json`` table (a
    list of records, as Statoil's ``train.json``) too: its columns of lists (an array source's
    bands) are left out unless ``lists``, its other cells read as strings."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    if path.suffix.lower() == ".json":
        return _read_json(path, what, lists)
    try:
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        except UnicodeDecodeError:  # not UTF-8: latin-1 decodes any byte, as Excel often writes
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="latin-1")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataError(f"{path}: cannot read {what}: {one_line(str(error))}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _read_json(path: Path, what: str, lists: bool) -> pd.DataFrame:
    try:
        frame = pd.read_json(path, orient="records", dtype=False, convert_dates=False)
    except ValueError as error:
        raise DataError(f"{path}: cannot read {what}: {one_line(str(error))}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    for column in frame.columns:
        listed = frame[column].map(lambda cell: isinstance(cell, list))
        if listed.any():
            if not lists:
                frame = frame.drop(columns=column)
            continue
        frame[column] = frame[column].map(lambda cell: "" if cell is None or cell != cell else str(cell))
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
    raise_first(train_problems(table, source, cfg.task))
    _warn_unlisted(cfg.data, table, paths.data / cfg.data.train_dir, source, _shared_paths(cfg, paths, "train"))
    return table


def read_train_table(cfg: PipelineConfig, paths: Paths) -> tuple[pd.DataFrame, Path]:
    """The train table as written, and the file (or folder) it comes from.

    Rows are not checked (see :func:`train_problems`), but a layout that cannot give labels at all
    is: one-hot label cells that are not 0/1 or, for a single-label task, a row without exactly
    one 1; a file-name pattern that misses a file; class images outside class folders.

    Raises:
        DataError: one line naming the file, the row and id, or the folder.
    """
    data = cfg.data
    if data.layout == "folders":
        return _train_from_folders(data, paths.data), train_source(cfg, paths)
    if data.layout == "file_names":
        return _train_from_file_names(data, paths.data), train_source(cfg, paths)
    return _train_from_csv(data, cfg.task, paths.data), train_source(cfg, paths)


def train_source(cfg: PipelineConfig, paths: Paths) -> Path:
    """Where the train table's labels come from: ``data.train_csv``, or the train folder for
    the ``folders`` and ``file_names`` layouts."""
    data = cfg.data
    return paths.data / (data.train_dir if data.layout in ("folders", "file_names") else data.train_csv)


def _train_from_csv(data: LayoutConfig, task: str, root: Path) -> pd.DataFrame:
    path = root / data.train_csv
    frame = read_csv(path, "train table")
    label_columns = data.label_columns or [data.label_column]
    require_columns(frame, [data.id_column, *label_columns], path)
    ids = frame[data.id_column].str.strip()
    labels = _labels(frame, ids, data, task, path)
    return pd.DataFrame({
        "id": ids,
        "label": labels,
        "path": [str(_image_path(data, root / data.train_dir, i)) for i in ids],
    })


def _labels(frame: pd.DataFrame, ids: pd.Series, data: LayoutConfig, task: str, path: Path) -> pd.Series:
    """A table's label cells as the train table holds them: from ``label_columns`` (one-hot)
    where set, else from ``label_column`` (a multilabel cell's space-separated classes joined by
    ``labels.SEPARATOR``)."""
    if data.label_columns:
        return _one_hot_labels(frame[data.label_columns], ids, task, path)
    if task == "multilabel":
        return frame[data.label_column].str.split().map(join_labels)
    return frame[data.label_column].str.strip()


def _one_hot_labels(cells: pd.DataFrame, ids: pd.Series, task: str, path: Path) -> pd.Series:
    """Each row's classes from one-hot columns (a class is its column's name): the one class of a
    single-label task, a multilabel row's classes (``labels.join_labels``)."""
    joined = [name for name in cells.columns if SEPARATOR in name] if task == "multilabel" else []
    if joined:
        raise DataError(f"{path}: label column {joined[0]!r} names a class with {SEPARATOR!r}, which separates "
                        "the classes of a multilabel label")
    values = cells.apply(lambda column: pd.to_numeric(column.str.strip(), errors="coerce"))
    bad = ~values.isin([0, 1]).to_numpy()
    if bad.any():
        row, column = np.argwhere(bad)[0]
        name = cells.columns[column]
        raise DataError(f"{path}: row {row + 2} (id {ids.iloc[row]!r}): label column {name!r} holds "
                        f"{cells.iloc[row, column]!r}, not 0 or 1" + _and_more(int(bad.any(axis=1).sum())))
    hot = values.to_numpy(dtype=bool)
    if task != "multilabel":
        counts = hot.sum(axis=1)
        raise_first([[f"{path}: row {row + 2} (id {ids.iloc[row]!r}) has {'no' if counts[row] == 0 else 'several'} "
                      f"1 in the label columns {', '.join(cells.columns)}; task {task!r} needs exactly one"
                      for row in np.flatnonzero(counts != 1)]])
    names = np.asarray(cells.columns, dtype=object)
    return pd.Series([join_labels(names[row]) for row in hot], index=cells.index, dtype=object)


def _train_from_folders(data: LayoutConfig, root: Path) -> pd.DataFrame:
    """One row per image of each class folder; its id is the file name (as the competition
    names the image), its label the folder's name."""
    folder = _train_folder(root, data)
    rows = [
        {"id": _image_id(data, image), "label": class_dir.name, "path": str(image)}
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        for image in _images_in(class_dir, data)
    ]
    loose = _images_in(folder, data)
    if not rows and loose:
        raise DataError(f"{folder}: layout 'folders' expects one sub-folder per class, but the {len(loose)} "
                        f"{data.extension} image(s) sit directly in it, e.g. {loose[0].name}; "
                        "labels in a table: layout 'csv', labels in file names: layout 'file_names'")
    return pd.DataFrame(rows, columns=["id", "label", "path"])


def _train_from_file_names(data: LayoutConfig, root: Path) -> pd.DataFrame:
    """One row per image in the train folder, labelled by ``label_pattern``'s group ``label``."""
    folder = _train_folder(root, data)
    files = _images_in(folder, data)
    pattern = re.compile(data.label_pattern)
    found = [pattern.search(image.name) for image in files]
    if files and not any(found):
        raise DataError(f"{folder}: data.label_pattern {data.label_pattern!r} matches none of its {len(files)} "
                        f"{data.extension} file names, e.g. {files[0].name}")
    raise_first([[f"{image}: data.label_pattern {data.label_pattern!r} does not match this file name"
                  for image, match in zip(files, found) if match is None]])
    rows = [{"id": _image_id(data, image), "label": match["label"] or "", "path": str(image)}
            for image, match in zip(files, found)]
    return pd.DataFrame(rows, columns=["id", "label", "path"])


def _train_folder(root: Path, data: LayoutConfig) -> Path:
    folder = root / data.train_dir
    if not folder.is_dir():
        raise DataError(f"{folder}: train folder not found")
    return folder


def _images_in(folder: Path, data: LayoutConfig) -> list[Path]:
    """The folder's image files with the pipeline's extension, hidden ones aside, sorted."""
    return sorted(p for p in folder.glob(f"*{data.extension}") if p.is_file() and not p.name.startswith("."))


def _image_id(data: LayoutConfig, image: Path) -> str:
    return image.name if data.ids_have_extension else image.stem


def _image_path(data: LayoutConfig, folder: Path, image_id: str) -> Path:
    return folder / (image_id if data.ids_have_extension else f"{image_id}{data.extension}")


def read_solution_labels(cfg: PipelineConfig, path: Path) -> pd.Series:
    """The solution file's labels indexed by id, read like the train table's labels: from
    ``label_columns`` (one-hot) where set, else from ``label_column``."""
    data = cfg.data
    frame = read_csv(path, "solution")
    require_columns(frame, [data.id_column, *(data.label_columns or [data.label_column])], path)
    ids = frame[data.id_column]
    labels = _labels(frame, ids, data, cfg.task, path)
    return pd.Series(labels.to_numpy(), index=pd.Index(ids, name=data.id_column), name="label")


def classes(cfg: PipelineConfig, paths: Paths, labels: pd.Series, source: Path | str = "labels") -> Classes:
    """The pipeline's classes of ``labels`` in their one order (:meth:`Classes.from_labels`;
    ``source`` names the labels' file in its errors).

    A binary task's positive class is ``positive_class`` where set, else the class the sample
    submission's prediction column is named after, if one is (else ``1`` of ``0``/``1``).

    Raises:
        ConfigError: a binary task whose positive class nothing says.
    """
    positive = cfg.positive_class
    if positive is None and cfg.task == "binary":
        positive = _positive_in_sample(cfg, paths, set(labels.astype(str)))
    return Classes.from_labels(labels, cfg.task, positive, source)


def _positive_in_sample(cfg: PipelineConfig, paths: Paths, names: set[str]) -> str | None:
    path = paths.data / cfg.data.sample_submission
    if not path.is_file():
        return None
    columns = [c for c in read_csv(path, "sample submission").columns if c != cfg.data.id_column]
    named = [c for c in columns if c in names]
    return named[0] if len(named) == 1 else None


# --- checks: each returns one message per bad row, grouped by kind --------------------------------

#: What a label cell holds when it was left empty (``keep_default_na=False`` keeps these as text).
EMPTY_LABELS = ("", "nan", "NaN", "None")

Problems = list[list[str]]


def train_problems(table: pd.DataFrame, source: Path, task: str) -> Problems:
    """Empty or repeated ids, empty labels, missing images of a train table (rows counted as in
    the CSV: the header is row 1). A multilabel row may hold no class at all (a one-hot row of
    zeros: nothing found in that image)."""
    empty = [] if task == "multilabel" else table.index[table["label"].isin(EMPTY_LABELS)]
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


def unlisted_warning(data: DataConfig, table: pd.DataFrame, folder: Path, source: Path,
                     shared: set[str] = frozenset()) -> str | None:
    """A warning if images in ``folder`` have no row in ``table`` (never used: harmless, yet often
    the sign of a wrong id column or extension), else None. ``shared``: the other split's image
    files, where both splits share one folder (they are used, by the other table)."""
    listed = set(table["path"]) | set(shared)
    unlisted = [p for p in _images_in(folder, data) if str(p) not in listed] if folder.is_dir() else []
    if not unlisted:
        return None
    return (f"{folder}: {len(unlisted)} image(s) have no row in {source.name} and are not used, "
            f"e.g. {unlisted[0].name}")


def _warn_unlisted(data: DataConfig, table: pd.DataFrame, folder: Path, source: Path, shared: set[str]) -> None:
    warning = unlisted_warning(data, table, folder, source, shared)
    if warning:
        log.warning(warning)


def _shared_paths(cfg: PipelineConfig, paths: Paths, split: str) -> set[str]:
    """The other split's image files where train and test share one folder, else nothing."""
    if cfg.data.train_dir != cfg.data.test_dir:
        return set()
    try:
        other, _ = (read_test_table if split == "train" else read_train_table)(cfg, paths)
    except DataError:  # the other table's own stage reports it
        return set()
    return set(other["path"])


def raise_first(problems: Problems) -> None:
    """Raise a DataError with the first problem of the first kind that has any."""
    for kind in problems:
        if kind:
            raise DataError(kind[0] + _and_more(len(kind)))


def _and_more(count: int) -> str:
    return f" (and {count - 1} more)" if count > 1 else ""


def load_test_table(cfg: PipelineConfig, paths: Paths) -> pd.DataFrame:
    """``id, path`` for every test image, in its table's order (see :func:`read_test_table`)."""
    table, source = read_test_table(cfg, paths)
    raise_first([*id_problems(table, source), file_problems(table, source)])
    _warn_unlisted(cfg.data, table, paths.data / cfg.data.test_dir, source, _shared_paths(cfg, paths, "test"))
    return table


def read_test_table(cfg: PipelineConfig, paths: Paths) -> tuple[pd.DataFrame, Path]:
    """``id, path`` from ``data.test_csv`` where set, else from the sample submission; unchecked;
    and the table's path."""
    data = cfg.data
    if data.test_csv is not None:
        path, what = paths.data / data.test_csv, "test table"
    else:
        path, what = paths.data / data.sample_submission, "sample submission"
    frame = read_csv(path, what)
    require_columns(frame, [data.id_column], path)
    ids = frame[data.id_column].str.strip()
    return pd.DataFrame({"id": ids, "path": [str(_image_path(data, paths.data / data.test_dir, i)) for i in ids]}), path


# --- table columns beside the scores and the pixels (stack.features, a model's meta) ---------------


def feature_table(cfg: PipelineConfig, paths: Paths, split: str, ids: np.ndarray, spec: TableColumns | None = None,
                  key: str = "stack.features") -> pd.DataFrame:
    """The columns ``spec`` reads (``stack.features`` where None; ``key`` names it in errors),
    for the rows ``ids`` in their order: from the train table (``split='train'``:
    ``data.train_csv``) or the test table (``data.test_csv``, else the sample submission),
    joined by id (see :func:`column_table`).

    Raises:
        DataError: one line naming the file and the column (missing), the row and the column
            (not a number), or an id without a row.
    """
    spec, data = spec or cfg.stack.features, cfg.data
    if split == "train":
        if data.layout != "csv":
            raise DataError(f"{key}: layout {data.layout!r} has no train table to read columns from; "
                            f"use layout 'csv'")
        path, what = paths.data / data.train_csv, "train table"
    else:
        _, path = read_test_table(cfg, paths)
        what = "test table" if data.test_csv is not None else "sample submission"
    return column_table(path, what, data.id_column, spec, ids, key)


def column_table(path: Path, what: str, id_column: str, spec: TableColumns, ids: np.ndarray | list[str],
                 key: str) -> pd.DataFrame:
    """The columns ``spec`` reads from the table at ``path``, for the rows ``ids`` in their
    order, joined by ``id_column``. Numeric columns as floats (an empty cell: missing),
    categorical and group columns as strings (an empty cell: missing).

    Raises:
        DataError: one line naming the file and the column (missing), the row and the column
            (not a number), or an id without a row.
    """
    frame = read_csv(path, what)
    wanted = spec.read
    require_columns(frame, [id_column, *wanted], path)
    listed = frame[id_column].str.strip()
    frame = frame.assign(**{id_column: listed}).drop_duplicates(id_column).set_index(id_column)
    absent = pd.Index(ids).difference(frame.index)
    if len(absent):
        raise DataError(f"{path}: no row for id {absent[0]!r}{_and_more(len(absent))} ({key} reads its columns)")
    table = frame.loc[list(ids), wanted].apply(lambda column: column.str.strip()).replace("", np.nan)
    for column in spec.numeric:
        numbers = pd.to_numeric(table[column], errors="coerce")
        bad = numbers.isna() & table[column].notna()
        if bad.any():
            first = table.index[bad.to_numpy()][0]
            row = int(np.flatnonzero(listed == first)[0]) + 2  # the header is row 1
            raise DataError(f"{path}: row {row} (id {first!r}): column {column!r} holds "
                            f"{table.loc[bad, column].iloc[0]!r}, not a number")
        table[column] = numbers.astype(np.float64)
    return table.reset_index(drop=True)


def image_ids(data: LayoutConfig, images: list[Path]) -> list[str]:
    """The ids of image files as the pipeline's tables name them (with or without the extension)."""
    return [_image_id(data, image) for image in images]


# --- external labelled data (data.extra) -----------------------------------------------------------


def load_extra_table(cfg: PipelineConfig, paths: Paths, classes: Classes) -> pd.DataFrame:
    """``id, label, path, dataset`` for every image of every ``data.extra`` dataset, each read
    where it lies (``paths.extra_data``: a Kaggle one where ``download`` put it) by its own layout
    keys, its labels mapped onto the scored classes by its ``label_map`` (``dataset``: its place
    in the list); empty without extra data.

    Raises:
        DataError: one line naming the file, the row (or image) and the label that is not in
            ``label_map`` (or, without one, not a scored class), or a missing image.
    """
    frames = [_extra_table(extra, i, cfg.task, classes, paths.extra_data(extra.source))
              for i, extra in enumerate(cfg.data.extra)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["id", "label", "path", "dataset"])


def _extra_table(extra: ExtraData, index: int, task: str, classes: Classes, root: Path) -> pd.DataFrame:
    if not root.is_dir():
        if extra.source.type == "local":
            raise DataError(f"data.extra[{index}].source.path = {str(root)!r}: folder not found")
        raise DataError(f"data.extra[{index}].source ({extra.source.type}): {root} not found; run `make download`")
    if extra.layout == "folders":
        table, source = _train_from_folders(extra, root), root / extra.train_dir
    elif extra.layout == "file_names":
        table, source = _train_from_file_names(extra, root), root / extra.train_dir
    else:
        table, source = _train_from_csv(extra, task, root), root / extra.train_csv
    raise_first([*id_problems(table, source), file_problems(table, source)])
    mapping = extra.label_map or {name: name for name in classes.names}
    cells = split_labels(table["label"]) if classes.multilabel else table["label"].map(lambda cell: [cell])
    for row, names in enumerate(cells):
        unknown = [name for name in names if name not in mapping]
        if unknown:
            where = f"row {row + 2} " if extra.layout == "csv" else ""
            known = (f"not in data.extra[{index}].label_map (keys: {', '.join(sorted(mapping))})" if extra.label_map
                     else f"not a scored class ({', '.join(classes.names)}) and data.extra[{index}] has no label_map")
            raise DataError(f"{source}: {where}(id {table['id'].iloc[row]!r}): label {unknown[0]!r} is {known}")
    off = sorted({value for value in mapping.values() if value not in classes.names})
    if off:
        raise DataError(f"data.extra[{index}].label_map: {off[0]!r} is not a scored class "
                        f"({', '.join(classes.names)})")
    mapped = [join_labels(sorted({mapping[name] for name in names})) if classes.multilabel else mapping[names[0]]
              for names in cells]
    # Prefixed: two datasets (or a dataset and the competition) may use the same ids.
    return table.assign(id=f"extra{index}:" + table["id"], label=mapped, dataset=index)


# --- a finer training label (data.train_label) -------------------------------------------------------


def fine_labels(cfg: PipelineConfig, paths: Paths, ids: np.ndarray, fine: FineClasses) -> np.ndarray:
    """The fine class index of each of ``ids`` (the folds' rows), from the train table's
    ``data.train_label`` column.

    Raises:
        DataError: one line naming the file, the row, the id and a value that ``label_map`` does
            not list (or a missing column).
    """
    path = paths.data / cfg.data.train_csv
    frame = read_csv(path, "train table")
    require_columns(frame, [cfg.data.id_column, cfg.data.train_label], path)
    values = frame[cfg.data.train_label].str.strip()
    for row, value in enumerate(values):
        if value not in cfg.data.label_map:
            raise DataError(f"{path}: row {row + 2} (id {frame[cfg.data.id_column].iloc[row]!r}): "
                            f"{cfg.data.train_label} {value!r} is not in data.label_map "
                            f"(keys: {', '.join(sorted(cfg.data.label_map))})")
    by_id = pd.Series(values.to_numpy(), index=frame[cfg.data.id_column].str.strip())
    return fine.classes.encode(by_id.loc[ids], path)
