"""Fetching a competition's files from a source that needs no Kaggle client (the embedded
default, a local folder), and the marker that says a download finished -- one marker for every
source, the Kaggle ones included (``foldstack.data.kaggle``)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from foldstack.core.config import PipelineConfig
from foldstack.core.errors import DataError
from foldstack.core.files import atomic_dir, write_csv, write_json
from foldstack.core.paths import Paths
from foldstack.data import archives
from foldstack.data.arrays import band_layout, write_bands

log = logging.getLogger(__name__)

MARKER = ".foldstack-download.json"


def fetch(cfg: PipelineConfig, paths: Paths, force: bool = False) -> Path:
    """Lay an embedded or local competition out under ``paths.data`` as the competition ships it.

    A completed download leaves a marker listing its files; a later call with the marker in place
    does nothing unless ``force``. The folder is built beside its final name and renamed, so an
    interrupted download never looks complete.
    """
    source = cfg.data.source
    if not force and up_to_date(paths.data, source, made_by(cfg)):
        log.info("%s is up to date (remove it or pass --force to fetch again)", paths.data)
        return paths.data
    writers = {"embedded": _write_embedded, "local": _copy_local}
    with atomic_dir(paths.data) as tmp:
        writers[source.type](cfg, tmp)
        complete(tmp, cfg, paths.data)
    return paths.data


def complete(folder: Path, cfg: PipelineConfig, final: Path, extra: Any = None) -> None:
    """Finish a download built in ``folder``, before it takes its place at ``final``: unpack its
    archives (``data.unpack``), then write a ``column`` source's band images
    (``arrays.write_bands``), then the marker. Every source ends here; ``extra``, the source of a
    ``data.extra`` dataset (image files, labelled by its own table: no bands), when it is one."""
    if cfg.data.unpack:
        archives.unpack_all(folder, final)
    if extra is None and cfg.data.image_source == "column":
        write_bands(folder, cfg.data)
    write_marker(folder, extra or cfg.data.source, made_by(cfg, extra))


def made_by(cfg: PipelineConfig, extra: Any = None) -> dict | None:
    """What a download made of its files beside fetching them, by the config's keys: a ``column``
    source's band images (``arrays.BAND_KEYS``); None for image files, and for ``extra``, the
    source of a ``data.extra`` dataset (:func:`complete`)."""
    if extra is None and cfg.data.image_source == "column":
        return band_layout(cfg.data)
    return None


def write_marker(folder: Path, source: Any, made: dict | None = None) -> None:
    """Record a finished download of ``source`` in ``folder``: the source, what was made of it
    (:func:`made_by`) and every file's size."""
    write_json(folder / MARKER, {"source": source.model_dump(mode="json"), "made": made, "files": _file_sizes(folder)})


def up_to_date(folder: Path, source: Any, made: dict | None = None) -> bool:
    """Whether ``folder`` holds a finished download of ``source``, made as ``made`` says
    (:func:`made_by`), that nobody has changed since."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if marker.get("source") != source.model_dump(mode="json") or marker.get("made") != made:
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
    writers = {"digits": write_digits, "digits_hard": write_digits_hard}
    writers[cfg.data.source.dataset](target, limit=cfg.data.source.limit)


def write_digits(target: Path, limit: int | None = None, seed: int = 0) -> None:
    """scikit-learn's 1,797 8x8 digits as a Kaggle competition: PNGs, train.csv, sample submission.

    The images stay 8x8 grayscale, their 17 grey levels (0-16) spread over 0-255. A fixed,
    stratified 80/20 split makes the test set; its answers go to ``solution.csv``.
    """
    from sklearn.model_selection import train_test_split

    images, labels = _digits()
    index = _keep(labels, limit, seed)
    train_idx, test_idx = train_test_split(index, test_size=0.2, stratify=labels[index], random_state=seed)
    _write_competition(target, images, labels, train_idx, test_idx)


#: digits_hard: labelled training images per class; every other digit is an unlabelled test image.
HARD_LABELLED_PER_CLASS = 20
#: digits_hard: the side of the square erased from each image (of 8 px), and the noise's sd (of 255).
HARD_ERASED_SIDE = 3
HARD_NOISE_SD = 40.0


def write_digits_hard(target: Path, limit: int | None = None, seed: int = 0) -> None:
    """The same digits made into a few-labels competition: 20 labelled images per class (200),
    the other 1,597 the test set (answers in ``solution.csv``), and every image, train and test
    alike, corrupted the same way: a random 3x3 square erased to the background and Gaussian
    noise (sd 40 of 255). Fixed by ``seed``: every build writes the same files.

    Why: the clean digits default scores 0.9965 in CV, so no recipe can show a gain over its
    noise; with few labels, occluded strokes and noise a small CNN lands far below that, and many
    unlabelled test images give pseudo-labels and distillation something to learn from.
    """
    images, labels = _digits()
    index = _keep(labels, limit, seed)
    rng = np.random.default_rng(seed)
    per_class = HARD_LABELLED_PER_CLASS if limit is None else max(2, HARD_LABELLED_PER_CLASS * len(index) // len(labels))
    train_idx = np.concatenate([rng.choice(index[labels[index] == c], per_class, replace=False)
                                for c in np.unique(labels[index])])
    test_idx = np.setdiff1d(index, train_idx)
    _write_competition(target, _corrupt(images, rng), labels, train_idx, test_idx)


def _corrupt(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image with one random ``HARD_ERASED_SIDE`` square set to 0 and Gaussian noise added."""
    noisy = images.astype(np.float64) + rng.normal(0.0, HARD_NOISE_SD, images.shape)
    side, size = HARD_ERASED_SIDE, images.shape[1]
    for image, (row, col) in zip(noisy, rng.integers(0, size - side + 1, (len(images), 2))):
        image[row:row + side, col:col + side] = 0.0
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 images (17 grey levels spread over 0-255) and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8), digits.target


def _keep(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Indices of the digits kept: all, or a stratified ``limit`` of them (tiny test runs)."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    if limit is not None and limit < len(index):
        index, _ = train_test_split(index, train_size=limit, stratify=labels, random_state=seed)
        index = np.sort(index)
    return index


def _write_competition(target: Path, images: np.ndarray, labels: np.ndarray, train_idx: np.ndarray,
                       test_idx: np.ndarray) -> None:
    """PNGs under ``train/`` and ``test/``, ``train.csv``, ``sample_submission.csv`` and ``solution.csv``."""
    from PIL import Image

    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    for split, split_idx in (("train", train_idx), ("test", test_idx)):
        folder = target / split
        folder.mkdir(parents=True)
        for i in split_idx:
            Image.fromarray(images[i], mode="L").save(folder / f"{_digit_id(i)}.png")
    test_ids = [_digit_id(i) for i in test_idx]
    write_csv(target / "train.csv", pd.DataFrame({"id": [_digit_id(i) for i in train_idx], "label": labels[train_idx]}))
    write_csv(target / "sample_submission.csv", pd.DataFrame({"id": test_ids, "label": 0}))
    write_csv(target / "solution.csv", pd.DataFrame({"id": test_ids, "label": labels[test_idx]}))


def _digit_id(index: int) -> str:
    return f"digit_{index:04d}"
