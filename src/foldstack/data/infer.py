"""A pipeline's data, task, submission and folds keys read off a competition's own files (``foldstack
init``): the sample submission's columns and values say the task and the submission format, the
train table's columns the id and the labels, the image folders the layout, the extension and
whether ids carry it.

Every key comes with what it was inferred from; a key the files cannot settle is marked
``check`` and a line in ``notes`` says why, naming the files, rather than a wrong guess passing
for a fact.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from foldstack.core.errors import DataError
from foldstack.data.tables import read_csv

#: Image file endings that foldstack reads (``data/images.py``).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".dcm", ".bmp", ".webp", ".gif")
#: Column names that say a row's group (a patient, a plant, a scene): folds keep a group together.
GROUP_NAMES = re.compile(r"patient|group|subject|individual|case_?id|owner|study_?id$", re.IGNORECASE)
#: Column names of ordered grades (an ordinal task), as competitions name them.
GRADE_NAMES = re.compile(r"grade|level|severity|diagnosis|stage|rating|score", re.IGNORECASE)
#: Ids of the table looked up among the image files (enough to tell folders apart).
PROBE = 200


@dataclass(frozen=True)
class Key:
    """One inferred key: its dotted place in the YAML, its value, why, and whether to check it."""

    path: str
    value: Any
    why: str
    check: bool = False


@dataclass
class Inference:
    """The keys inferred, in the YAML's order, and one line per thing the files cannot say."""

    keys: list[Key] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def set(self, path: str, value: Any, why: str, check: bool = False) -> None:
        self.keys = [key for key in self.keys if key.path != path]
        self.keys.append(Key(path, value, why, check))

    def get(self, path: str, default: Any = None) -> Any:
        return next((key.value for key in self.keys if key.path == path), default)

    def note(self, line: str) -> None:
        self.notes.append(line)


@dataclass(frozen=True)
class _Images:
    """A folder of images: the files directly in it, by name, and their most common ending."""

    folder: Path
    names: frozenset[str]
    extension: str

    def match(self, ids: list[str]) -> tuple[int, bool]:
        """How many ``ids`` name a file here, and whether they carry the extension."""
        with_ext = sum(i in self.names for i in ids)
        without = sum(f"{i}{self.extension}" in self.names for i in ids)
        return max(with_ext, without), with_ext > without


def infer(folder: Path, task_hint: str | None = None) -> Inference:
    """The data, task, submission, positive class and folds of the competition in ``folder``
    (archives already unpacked).

    Raises:
        DataError: the folder holds no image at all, or no train table nor train image folder.
    """
    found = Inference()
    image_dirs = _image_dirs(folder)
    if not image_dirs:
        raise DataError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in it or its sub-folders")
    csvs = sorted(p for p in folder.glob("*.csv") if p.is_file())
    sample_path = next((p for p in csvs if re.search(r"sample|submission", p.name, re.IGNORECASE)), None)
    sample = read_csv(sample_path, "sample submission") if sample_path else None
    if sample is None:
        found.note(f"{folder}: no sample submission among {', '.join(p.name for p in csvs) or 'its files'}; "
                   "the submission's file and format are guesses")
        found.set("data.sample_submission", "sample_submission.csv", "no sample submission shipped", check=True)
    else:
        found.set("data.sample_submission", sample_path.name, "the CSV named like a sample submission")
    id_column = sample.columns[0] if sample is not None else None
    tables = [p for p in csvs if p != sample_path and not re.search(r"solution", p.name, re.IGNORECASE)]
    test_path = next((p for p in tables if p.name.lower().startswith("test") and id_column
                      and id_column in read_csv(p, "test table").columns), None)
    train_path = _train_table(tables, test_path, id_column)
    class_parent = _class_parent(folder, image_dirs)
    if class_parent is not None:
        _folders_layout(found, folder, class_parent, train_path, sample, sample_path)
    elif train_path is not None:
        _csv_layout(found, folder, image_dirs, train_path, sample, sample_path, task_hint)
    else:
        _file_names_layout(found, folder, image_dirs, sample, sample_path)
    _test_keys(found, folder, image_dirs, test_path, sample, sample_path)
    return found


# --- tables and folders ------------------------------------------------------------------------------


def _image_dirs(folder: Path) -> list[_Images]:
    """Every folder holding images directly, shallowest first."""
    by_dir: dict[Path, list[str]] = {}
    for path in folder.rglob("*"):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file() and not any(
                part.startswith(".") for part in path.relative_to(folder).parts):
            by_dir.setdefault(path.parent, []).append(path.name)
    dirs = []
    for path, names in by_dir.items():
        extension = Counter(Path(n).suffix for n in names).most_common(1)[0][0]
        dirs.append(_Images(path, frozenset(names), extension))
    return sorted(dirs, key=lambda d: (len(d.folder.relative_to(folder).parts), d.folder.as_posix()))


def _train_table(tables: list[Path], test_path: Path | None, id_column: str | None) -> Path | None:
    """The train table: a CSV holding the sample's id column (any CSV with 'train' in its name
    when there is no sample), ``train.csv`` first, then names with 'train', then 'label'."""
    def rank(path: Path) -> tuple[int, str]:
        name = path.name.lower()
        return (0 if name == "train.csv" else 1 if "train" in name and "label" in name else 2 if "train" in name
                else 3 if "label" in name else 4), name

    candidates = []
    for path in sorted((p for p in tables if p != test_path), key=rank):
        columns = read_csv(path, "table").columns
        if (id_column in columns) if id_column else "train" in path.name.lower():
            candidates.append(path)
    return candidates[0] if candidates else None


def _class_parent(folder: Path, dirs: list[_Images]) -> Path | None:
    """A folder named like the train split whose sub-folders (two or more) hold the images."""
    parents = Counter(d.folder.parent for d in dirs if d.folder.parent != folder)
    for parent, count in parents.items():
        holds_images = any(d.folder == parent for d in dirs)
        if count >= 2 and "train" in parent.name.lower() and not holds_images:
            return parent
    return None


def _best_dir(dirs: list[_Images], ids: list[str]) -> tuple[_Images | None, bool, int]:
    """The folder whose files the most ``ids`` name (the shallowest on a tie), whether ids carry
    the extension, and how many matched."""
    best, best_count, best_ext = None, 0, False
    for images in dirs:
        count, with_ext = images.match(ids)
        if count > best_count:
            best, best_count, best_ext = images, count, with_ext
    return best, best_ext, best_count


def _rel(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()


# --- the three layouts -------------------------------------------------------------------------------


def _csv_layout(found: Inference, folder: Path, dirs: list[_Images], train_path: Path,
                sample: pd.DataFrame | None, sample_path: Path | None, task_hint: str | None) -> None:
    table = read_csv(train_path, "train table")
    id_column = sample.columns[0] if sample is not None else table.columns[0]
    found.set("data.layout", "csv", f"{train_path.name} names the images and their labels")
    found.set("data.train_csv", train_path.name, f"the table holding {id_column!r}, the sample's id column")
    found.set("data.id_column", id_column, "the sample submission's first column" if sample is not None
              else f"{train_path.name}'s first column", check=sample is None)
    ids = table[id_column].str.strip().tolist()[:PROBE]
    images, with_ext, count = _best_dir(dirs, ids)
    if images is None:
        found.note(f"{train_path}: none of its {id_column!r} ids names an image file in {folder}")
        images = dirs[0]
    found.set("data.train_dir", _rel(images.folder, folder), f"{count} of {len(ids)} ids of {train_path.name} "
              "name its files" if count else "no id names a file: the first image folder", check=not count)
    found.set("data.extension", images.extension, f"the files of {_rel(images.folder, folder)}/")
    found.set("data.ids_have_extension", with_ext, f"ids like {ids[0]!r} " +
              ("are file names" if with_ext else f"plus {images.extension} are file names"))
    preds = [c for c in sample.columns[1:]] if sample is not None else []
    label = _label_columns(found, train_path, table, id_column, preds, sample_path)
    _task(found, folder, train_path, table, label, sample, task_hint)
    _folds(found, train_path, table, id_column, label)


def _folders_layout(found: Inference, folder: Path, parent: Path, train_path: Path | None,
                    sample: pd.DataFrame | None, sample_path: Path | None) -> None:
    classes = sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    found.set("data.layout", "folders", f"{_rel(parent, folder)}/ holds one folder per class ({len(classes)})")
    id_column = sample.columns[0] if sample is not None else "id"
    found.set("data.id_column", id_column, "the sample submission's first column", check=sample is None)
    label = sample.columns[1] if sample is not None and len(sample.columns) == 2 else "label"
    found.set("data.label_column", label, "the sample submission's prediction column", check=sample is None)
    found.set("data.train_dir", _rel(parent, folder), "the folder of class folders")
    files = [p for c in classes for p in sorted((parent / c).iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS]
    extension = Counter(p.suffix for p in files).most_common(1)[0][0]
    found.set("data.extension", extension, "the files of the class folders")
    with_ext = sample is not None and sample[id_column].str.endswith(extension).all()
    found.set("data.ids_have_extension", bool(with_ext), "the sample's ids " + ("end" if with_ext else "do not end")
              + f" with {extension}")
    if train_path is not None:
        _class_folders_agree(found, folder, parent, files, train_path, label, bool(with_ext))
    labels = pd.Series([p.parent.name for p in files])
    _task_of_labels(found, labels, f"the class folders of {_rel(parent, folder)}/", sample, label, None)
    _set_folds(found, None, "")


def _class_folders_agree(found: Inference, folder: Path, parent: Path, files: list[Path], train_path: Path,
                         label: str, with_ext: bool) -> None:
    """One line (and ``layout`` to check) where a table also labels the images, differently."""
    table = read_csv(train_path, "train table")
    id_column = found.get("data.id_column")
    if id_column not in table.columns or label not in table.columns:
        return
    labelled = dict(zip(table[id_column].str.strip(), table[label].str.strip()))
    for path in files:
        said = labelled.get(path.name if with_ext else path.stem)
        if said is not None and said != path.parent.name:
            found.note(f"{train_path}: id {path.name if with_ext else path.stem!r} is labelled {said!r}, but its "
                       f"image is in {_rel(path.parent, folder)}/; the class folders are taken")
            found.set("data.layout", "folders", f"{_rel(parent, folder)}/ holds one folder per class, which "
                      f"{train_path.name} contradicts", check=True)
            return


def _file_names_layout(found: Inference, folder: Path, dirs: list[_Images], sample: pd.DataFrame | None,
                       sample_path: Path | None) -> None:
    train = next((d for d in dirs if "train" in d.folder.name.lower()), None)
    if train is None:
        raise DataError(f"{folder}: no train table (a CSV holding the sample's ids) and no train image folder; "
                        "write the pipeline by hand (README, 'Layouts')")
    prefixes = Counter(re.split(r"[._-]", name, maxsplit=1)[0] for name in train.names)
    if not 2 <= len(prefixes) <= max(2, len(train.names) // 2):
        raise DataError(f"{train.folder}: no table labels its images and their names share no label prefix "
                        f"(e.g. {sorted(train.names)[0]}); write the pipeline by hand (README, 'Layouts')")
    separator = re.search(r"[._-]", sorted(train.names)[0])
    pattern = f"^(?P<label>{'|'.join(sorted(prefixes))}){re.escape(separator.group() if separator else '.')}"
    found.set("data.layout", "file_names", f"{_rel(train.folder, folder)}/ has no table; its file names start "
              f"with one of {len(prefixes)} labels")
    found.set("data.label_pattern", pattern, f"the file names' prefixes ({', '.join(sorted(prefixes))})")
    id_column = sample.columns[0] if sample is not None else "id"
    found.set("data.id_column", id_column, "the sample submission's first column", check=sample is None)
    label = sample.columns[1] if sample is not None and len(sample.columns) == 2 else "label"
    found.set("data.label_column", label, "the sample submission's prediction column", check=sample is None)
    found.set("data.train_dir", _rel(train.folder, folder), "the folder of labelled file names")
    found.set("data.extension", train.extension, f"the files of {_rel(train.folder, folder)}/")
    labels = pd.Series([re.match(pattern, n)["label"] for n in sorted(train.names)])
    _task_of_labels(found, labels, f"the file names of {_rel(train.folder, folder)}/", sample, label, None)
    _set_folds(found, None, "")


def _test_keys(found: Inference, folder: Path, dirs: list[_Images], test_path: Path | None,
               sample: pd.DataFrame | None, sample_path: Path | None) -> None:
    """``test_csv`` where a test table holds the ids, ``test_dir`` where they name files, and
    ``ids_have_extension`` for layouts whose train ids come from files."""
    if test_path is not None:
        found.set("data.test_csv", test_path.name, f"a test table with the id column {found.get('data.id_column')!r}")
        ids, source = read_csv(test_path, "test table")[found.get("data.id_column")].str.strip().tolist(), test_path
    elif sample is not None:
        ids, source = sample[sample.columns[0]].str.strip().tolist(), sample_path
    else:
        test = next((d for d in dirs if "test" in d.folder.name.lower()), None)
        found.set("data.test_dir", _rel(test.folder, folder) if test else "test", "the folder named test; no "
                  "table says the test ids", check=True)
        return
    images, with_ext, count = _best_dir(dirs, ids[:PROBE])
    if not count:
        guess = next((d for d in dirs if "test" in d.folder.name.lower()), dirs[0])
        found.note(f"{source}: none of its ids (e.g. {ids[0]!r}) names an image file in {folder}; "
                   f"test_dir {_rel(guess.folder, folder)} is a guess")
        found.set("data.test_dir", _rel(guess.folder, folder), f"no id of {source.name} names a file", check=True)
        return
    found.set("data.test_dir", _rel(images.folder, folder), f"{count} of {min(len(ids), PROBE)} ids of "
              f"{source.name} name its files")
    if found.get("data.layout") == "file_names":
        found.set("data.ids_have_extension", with_ext, f"{source.name}'s ids like {ids[0]!r} "
                  + ("are file names" if with_ext else f"plus {images.extension} are file names"))


# --- labels and task ---------------------------------------------------------------------------------


def _label_columns(found: Inference, train_path: Path, table: pd.DataFrame, id_column: str, preds: list[str],
                   sample_path: Path | None) -> pd.Series | pd.DataFrame:
    """Set ``label_column`` or ``label_columns``; returns the labels (one-hot columns as a frame)."""
    columns = [c for c in table.columns if c != id_column]
    if len(preds) >= 2 and set(preds) <= set(columns):
        found.set("data.label_columns", preds, f"the sample's prediction columns, each a column of {train_path.name}")
        return table[preds]
    if len(preds) == 1 and preds[0] in columns:
        found.set("data.label_column", preds[0], f"the sample's prediction column, also in {train_path.name}")
        return table[preds[0]]
    if len(preds) >= 2:
        named = [c for c in columns if set(table[c].str.strip()) <= set(preds)]
        if named:
            found.set("data.label_column", named[0], f"its values are the sample's {len(preds)} prediction "
                      "columns' names", check=len(named) > 1)
            if len(named) > 1:
                found.note(f"{train_path}: columns {', '.join(map(repr, named))} all hold the sample's class "
                           f"names; label_column {named[0]!r} is a guess")
            return table[named[0]]
    candidates = [c for c in columns if not GROUP_NAMES.search(c) and table[c].nunique() < len(table)
                  and table[c].nunique() > 1]
    if not candidates:
        raise DataError(f"{train_path}: no column but {id_column!r} could hold the labels")
    why = (f"the sample's prediction column {preds[0]!r} is not in {train_path.name}" if preds
           else "no sample submission says which column is scored")
    found.set("data.label_column", candidates[0], f"{why}; a column of repeated values", check=True)
    if len(candidates) > 1:
        found.note(f"{train_path}: {len(candidates)} columns could be the label ({', '.join(map(repr, candidates))}); "
                   f"label_column {candidates[0]!r} is a guess")
    return table[candidates[0]]


def _task(found: Inference, folder: Path, train_path: Path, table: pd.DataFrame, label: pd.Series | pd.DataFrame,
          sample: pd.DataFrame | None, task_hint: str | None) -> None:
    if isinstance(label, pd.DataFrame):
        hot = label.apply(lambda c: pd.to_numeric(c.str.strip(), errors="coerce")).fillna(0)
        single = bool((hot.sum(axis=1) == 1).all())
        found.set("task", "multiclass" if single else "multilabel",
                  f"{'exactly one' if single else 'any number of'} 1 a row in the label columns")
        found.set("submission.format", "probabilities", "the sample has one column per class")
        return
    maps = sorted(p.name for p in folder.glob("*") if p.suffix in (".json", ".csv") and "map" in p.name.lower())
    _task_of_labels(found, label, f"{train_path.name}'s {label.name!r}", sample, label.name, maps, task_hint)


def _task_of_labels(found: Inference, labels: pd.Series, where: str, sample: pd.DataFrame | None, column: str,
                    maps: list[str] | None, task_hint: str | None = None) -> None:
    """``task``, ``submission.format`` and a binary task's ``positive_class`` from one label per
    row and the sample's prediction columns."""
    labels = labels.astype(str).str.strip()
    values = set(labels) - {""}
    preds = list(sample.columns[1:]) if sample is not None else []
    cells = sample[preds[0]].astype(str).str.strip() if len(preds) == 1 else pd.Series(dtype=str)
    numbers = pd.to_numeric(pd.Series(sorted(values)), errors="coerce")
    if maps is not None and _space_separated(values):
        found.set("task", "multilabel", f"{where} holds {len({t for v in values for t in v.split()})} classes, space-separated, in "
                  f"{len(values)} combinations")
        found.set("submission.format", "multilabel" if len(preds) == 1 else "probabilities",
                  "one column for the space-separated classes" if len(preds) == 1 else "one column per class")
        return
    sample_decimals = len(cells) > 0 and bool((pd.to_numeric(cells, errors="coerce") % 1 > 0).any())
    if numbers.notna().all() and ((numbers % 1 != 0).any() or (len(values) > 2 and sample_decimals)):
        found.set("task", "regression", f"{where} holds numbers" + (", the sample's column decimals"
                  if sample_decimals else " with decimals"), check=True)
        found.note(f"{where}: a regression target; foldstack cannot train regression yet")
        found.set("submission.format", "label", "the value itself: no foldstack format fits yet", check=True)
        return
    if len(preds) >= 2:
        found.set("task", "binary" if len(values) == 2 else "multiclass",
                  f"{where} holds {len(values)} classes, one a row")
        found.set("submission.format", "probabilities", "the sample has one column per class")
        return
    if len(values) == 2:
        found.set("task", "binary", f"{where} holds 2 classes")
        _binary(found, values, cells, column, where)
        return
    if maps is not None and numbers.notna().all():
        grades = GRADE_NAMES.search(column) and not maps and task_hint != "multiclass"
        if grades or task_hint == "ordinal":
            found.set("task", "ordinal", f"{where} holds integer grades {', '.join(sorted(values, key=float))}",
                      check=task_hint != "ordinal")
            found.set("submission.format", "label", "an ordinal task submits grades")
            return
        found.set("task", "multiclass", f"{where} holds {len(values)} integer classes" +
                  (f", named in {', '.join(maps)}" if maps else "; ordered grades would be task ordinal"),
                  check=not maps and task_hint != "multiclass")
    else:
        found.set("task", "multiclass", f"{where} holds {len(values)} classes, one a row")
    found.set("submission.format", "label", "the sample's one prediction column holds a class" if preds
              else "no sample submission", check=not preds)


def _space_separated(values: set[str]) -> bool:
    """Whether label cells list several classes separated by spaces: some cell holds several
    words and one of them is a class alone elsewhere ('scab' and 'scab rust'), or there are fewer
    words than distinct cells (combinations of a few classes); a class name with a space
    ('Common wheat') is neither."""
    several = [v.split() for v in values if len(v.split()) > 1]
    if not several:
        return False
    tokens = {t for v in values for t in v.split()}
    return any(t in values for words in several for t in words) or len(tokens) < len(values)


def _binary(found: Inference, values: set[str], cells: pd.Series, column: str, where: str) -> None:
    if cells.empty:
        found.set("submission.format", "binary", "no sample submission: the positive class's probability, "
                  "as most binary tasks are scored", check=True)
    decimals = pd.to_numeric(cells, errors="coerce")
    probability = decimals.notna().all() and len(cells) > 0 and not set(cells) <= values
    if cells.empty:
        pass
    elif probability or decimals.notna().all():
        found.set("submission.format", "binary", "the sample's one column holds " +
                  ("a probability" if probability else "a number: the positive class's probability"),
                  check=not probability)
    else:
        found.set("submission.format", "label", "the sample's one column holds a class name")
    if values == {"0", "1"}:
        found.set("positive_class", "1", "1 of the classes 0/1")
    elif column in values:
        found.set("positive_class", column, "the sample's prediction column is named after it")
    else:
        positive = sorted(values)[1]
        found.set("positive_class", positive, f"nothing in the files says which of {', '.join(sorted(values))} "
                  "is positive", check=True)
        found.note(f"{where}: nothing says which of {', '.join(sorted(values))} the sample's {column!r} is the "
                   f"probability of; positive_class {positive!r} is a guess")


# --- folds ---------------------------------------------------------------------------------------------


def _folds(found: Inference, train_path: Path, table: pd.DataFrame, id_column: str,
           label: pd.Series | pd.DataFrame) -> None:
    taken = set(label.columns) if isinstance(label, pd.DataFrame) else {label.name}
    groups = [c for c in table.columns if c != id_column and c not in taken and GROUP_NAMES.search(c)
              and 1 < table[c].nunique() < len(table)]
    _set_folds(found, groups[0] if groups else None, train_path.name)


def _set_folds(found: Inference, group: str | None, table: str) -> None:
    found.set("folds.k", 5, "the usual five folds")
    found.set("folds.seed", 42, "any fixed seed")
    multilabel = found.get("task") == "multilabel"
    if group is None:
        found.set("folds.strategy", "stratified", "iterative stratification of every label" if multilabel
                  else "every class's share in each fold", check=found.get("task") == "regression")
        return
    found.set("folds.strategy", "stratified_grouped", f"{table}'s {group!r} repeats across rows: a group "
              "stays in one fold")
    found.set("folds.group_column", group, "its name says a group, and its values repeat")
