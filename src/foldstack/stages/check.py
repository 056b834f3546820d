"""`foldstack check`: validate a pipeline's data before any training.

The stage readers stop at the first problem; this module collects them all (every bad row, every
unreadable image) and prints a summary: images per class, image sizes and modes, warnings and
problems. A problem is something that would make training fail or be wrong; a warning is
something odd that training survives (an image no row uses, a test label never seen in training). Layouts that cannot give labels at
all (a file-name pattern that misses, class images outside class folders, a one-hot row without
exactly one 1) are one problem each, from the table readers; so is an archive left packed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from foldstack.core.config import ConfigError, PipelineConfig
from foldstack.core.errors import DataError
from foldstack.core.paths import Paths
from foldstack.data import archives, images, splits, tables
from foldstack.data.arrays import ImageReader
from foldstack.data.labels import Classes, every_label

#: Messages of one kind shown before the rest are counted (a missing folder can be 10,000 rows).
SHOWN_PER_KIND = 10


@dataclass
class Report:
    """What ``check`` found: summary lines, then warnings and problems, one message per file or
    row. Every problem counts; :meth:`render` shows the first few of each kind."""

    summary: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    _shown: list[str] = field(default_factory=list, repr=False)

    def problem(self, *kinds: list[str]) -> None:
        """Record each kind's messages: all of them count, the first few are shown."""
        for kind in kinds:
            self.problems.extend(kind)
            self._shown.extend(_capped(kind))

    def render(self) -> str:
        """The summary, the warnings, then the problems, one per line."""
        lines = list(self.summary)
        if self.warnings:
            lines += [f"warnings ({len(self.warnings)}):", *(f"  {w}" for w in self.warnings)]
        lines.append(f"problems ({len(self.problems)}):" if self.problems else "problems: none")
        lines += [f"  {p}" for p in self._shown]
        return "\n".join(lines)


def _capped(kind: list[str]) -> list[str]:
    more = len(kind) - SHOWN_PER_KIND
    return kind[:SHOWN_PER_KIND] + ([f"... and {more} more like the last"] if more > 0 else [])


def run(cfg: PipelineConfig, paths: Paths) -> Report:
    """Check the archives, the train table, the test table, every image they name and the solution file."""
    report = Report(summary=[f"check {cfg.name}: {paths.data}"])
    if not paths.data.is_dir():
        report.problem([f"{paths.data}: data folder not found; run the download stage first"])
        return report
    if cfg.data.unpack:
        report.problem([archives.archive_problem(path) for path in archives.find(paths.data)])
    train = _check_train(cfg, paths, report)
    test = _check_test(cfg, paths, report)
    _warn_unlisted(cfg, paths, train, test, report)
    _check_images([*_existing(train), *_existing(test)], report, ImageReader.of(cfg.data))
    if train is not None and cfg.task != "regression":  # a regression's solution holds numbers, no class
        _check_solution(cfg, paths, _names(train["label"], cfg.task), report)
    return report


def _read(read_table, cfg: PipelineConfig, paths: Paths, report: Report) -> tuple[pd.DataFrame, Path] | None:
    """``read_table(cfg, paths)`` (a table and its file), or None with its error reported."""
    try:
        return read_table(cfg, paths)
    except DataError as error:
        report.problem([str(error)])
        return None


def _check_train(cfg: PipelineConfig, paths: Paths, report: Report) -> pd.DataFrame | None:
    """Check the train table; returns it with its empty labels dropped (a multilabel row may have
    none), or None if unreadable."""
    read = _read(tables.read_train_table, cfg, paths, report)
    if read is None:
        return None
    table, source = read
    if table.empty:
        report.problem([f"{source}: the train set is empty"])
        return None
    report.problem(*tables.train_problems(table, source, cfg.task), *_fold_problems(cfg, paths, table))
    labelled = table if cfg.task == "multilabel" else table[~table["label"].isin(tables.EMPTY_LABELS)]
    if cfg.task == "regression":
        return _check_targets(labelled, source, report)
    classes = _names(labelled["label"], cfg.task)
    if cfg.task == "binary" and len(classes) != 2:
        report.problem([f"{source}: task 'binary' needs 2 classes; the labels hold {len(classes)}"])
    elif cfg.task == "binary":
        try:
            classes = tables.classes(cfg, paths, labelled["label"]).names
        except ConfigError as error:
            report.problem([str(error)])
    report.summary.append(f"train: {len(table)} images in {len(classes)} classes ({source.name})")
    counts = _class_counts(labelled["label"], cfg.task)
    report.summary.append("  per class: " + ", ".join(f"{name}: {counts[name]}" for name in classes))
    if cfg.task == "binary" and len(classes) == 2:
        report.summary.append(f"  positive class: {classes[1]}")
    return labelled.assign(source=str(source))


def _check_targets(table: pd.DataFrame, source: Path, report: Report) -> pd.DataFrame:
    """A regression's train table: every target a number (one line naming the first that is
    not), and their range in the summary."""
    try:
        values = Classes.from_labels(table.set_index("id")["label"], "regression", source=source).encode(
            table.set_index("id")["label"], source)
    except DataError as error:
        report.problem([str(error)])
        return table.assign(source=str(source))
    report.summary.append(f"train: {len(table)} images, targets {values.min():.4g} .. {values.max():.4g} "
                          f"(mean {values.mean():.4g}) ({source.name})")
    return table.assign(source=str(source))


def _names(labels: pd.Series, task: str) -> tuple[str, ...]:
    """The class names in ``labels``, sorted; a binary task's positive class aside (reported apart)."""
    return Classes.from_labels(labels, "multilabel" if task == "multilabel" else "multiclass").names


def _fold_problems(cfg: PipelineConfig, paths: Paths, table: pd.DataFrame) -> list[list[str]]:
    """What would stop ``folds`` from giving every fold its share of every class (or group)."""
    if cfg.folds.strategy == "stratified":
        labels = table["label"][~table["label"].isin(tables.EMPTY_LABELS)]  # already problems of their own
        return [splits.rare_classes(labels, cfg.folds.k, cfg.task)]
    try:
        splits.make_folds(table, cfg.folds.k, cfg.folds.seed, cfg.task, cfg.folds.strategy,
                          splits.read_groups(cfg, paths))
    except DataError as error:
        return [[str(error)]]
    return []


def _class_counts(labels: pd.Series, task: str) -> Counter:
    return Counter(every_label(labels, task == "multilabel"))


def _check_test(cfg: PipelineConfig, paths: Paths, report: Report) -> pd.DataFrame | None:
    """Check the sample submission's ids and their images; returns the test table, or None."""
    read = _read(tables.read_test_table, cfg, paths, report)
    if read is None:
        return None
    table, source = read
    report.problem(*tables.id_problems(table, source), tables.file_problems(table, source))
    report.summary.append(f"test: {len(table)} images ({source.name})")
    return table.assign(source=str(source))


def _existing(table: pd.DataFrame | None) -> list[str]:
    """The table's image files that exist, each once (a missing one is already a problem)."""
    if table is None:
        return []
    return [path for path in table["path"].unique() if Path(path).is_file()]


def _warn_unlisted(cfg: PipelineConfig, paths: Paths, train: pd.DataFrame | None, test: pd.DataFrame | None,
                   report: Report) -> None:
    """Warn about images in the train and test folders that no table uses; where both splits share
    one folder, an image either table uses counts as used."""
    shared = cfg.data.train_dir == cfg.data.test_dir
    for table, other, folder in ((train, test, cfg.data.train_dir), (test, train, cfg.data.test_dir)):
        if table is None:
            continue
        used = set(other["path"]) if shared and other is not None else set()
        warning = tables.unlisted_warning(cfg.data, table, paths.data / folder, Path(table["source"].iloc[0]), used)
        if warning:
            report.warnings.append(warning)


def _check_images(files: list[str], report: Report, read: ImageReader) -> None:
    """Decode every image once (an array image: read, its shape and channels checked, scaled):
    unreadable ones are problems; sizes and modes go to the summary."""
    sizes: Counter = Counter()
    modes: Counter = Counter()
    unreadable = []
    for path in tqdm(files, desc="check images", unit="img", leave=False, disable=None):
        try:
            info = images.inspect(path) if read.source == "files" else _array_info(read(path))
        except DataError as error:
            unreadable.append(str(error))
            continue
        sizes[info.size] += 1
        modes[info.mode] += 1
    report.problem(unreadable)
    if sizes:
        by_area = sorted(sizes, key=lambda size: size[0] * size[1])
        report.summary.append(f"image sizes: {len(sizes)} distinct, most common {_counted(sizes, _wxh)}; "
                              f"smallest {_wxh(by_area[0])}, largest {_wxh(by_area[-1])}")
        report.summary.append(f"image modes: {_counted(modes, str)}")


def _array_info(image) -> images.ImageInfo:
    return images.ImageInfo((image.shape[1], image.shape[0]), f"{image.shape[2]}-channel array")


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _counted(counts: Counter, name, most: int = 5) -> str:
    return ", ".join(f"{name(value)} ({count})" for value, count in counts.most_common(most))


def _check_solution(cfg: PipelineConfig, paths: Paths, classes: tuple[str, ...], report: Report) -> None:
    """Warn about solution labels that no model can predict (they were never in training)."""
    if cfg.data.solution is None or not (paths.data / cfg.data.solution).is_file():
        return
    path = paths.data / cfg.data.solution
    try:
        labels = tables.read_solution_labels(cfg, path)
    except DataError as error:
        report.problem([str(error)])
        return
    unseen = sorted(set(_names(labels, cfg.task)) - set(classes))
    if unseen:
        report.warnings.append(f"{path}: label(s) {', '.join(map(repr, unseen))} never appear in training; "
                               "no model can predict them, so the local score counts those rows as wrong")
