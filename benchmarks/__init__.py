"""Benchmarks of foldstack's stages: ratios measured side by side in one run.

The machine is shared (two cores, other jobs running), so absolute times are noise; every
benchmark reports a ratio between foldstack's path and a baseline timed in the same process,
one right after the other. ``python -m benchmarks`` (``make bench``) runs them and prints a table.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DIGITS_YAML = REPO / "pipelines" / "digits.yaml"
#: EfficientNet-Lite0 as the digits default had it until issue #15 (frozen ImageNet features at
#: 64 px; CV 0.9395): the regime benchmarks' pretrained model.
DIGITS_LITE0 = {"name": "lite0", "backbone": "efficientnet_lite0", "weights": "imagenet", "image_size": 64,
                "regime": "features", "epochs": 40, "batch_size": 64, "lr": 0.003, "dropout": 0.3, "patience": 8}


def digits_pipeline() -> dict:
    """``pipelines/digits.yaml`` as a dict, with :data:`DIGITS_LITE0` among its models."""
    import yaml

    cfg = yaml.safe_load(DIGITS_YAML.read_text())
    if all(model["name"] != "lite0" for model in cfg["models"]):
        cfg["models"].append(dict(DIGITS_LITE0))
    return cfg


@dataclass(frozen=True)
class Row:
    """One line of the results table.

    Attributes:
        bench: the benchmark (``loader``, ``training``...).
        case: what was measured.
        figure: the measurement as text, units included.
        ratio: foldstack against its baseline (higher is better unless ``target`` says otherwise).
        target: the goal, as text (``>= 3x``), or empty.
        met: whether the goal is met, or None where there is none.
    """

    bench: str
    case: str
    figure: str
    ratio: float | None = None
    target: str = ""
    met: bool | None = None


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table, ready for RESULTS.md."""
    head = ["benchmark", "case", "figure", "ratio", "target", "met"]
    lines = [head] + [[r.bench, r.case, r.figure, "" if r.ratio is None else f"{r.ratio:.2f}", r.target,
                       {True: "yes", False: "NO", None: ""}[r.met]] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |" for line in lines]
    text.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(text)


def machine() -> str:
    """Cores, CPU model and date: the heading every figure in RESULTS.md goes under."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), {datetime.date.today().isoformat()}"


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    """``(seconds, fn(*args, **kwargs))`` by the wall clock."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def digits_cache_file(folder: Path, size: int) -> Path:
    """Where :func:`digits_images` keeps the digits training split's cache at ``size`` px."""
    return folder / "cache" / f"{size}.npy"


def digits_images(folder: Path, size: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The digits training split written to ``folder`` as PNGs: ``(files, cache, labels)``.

    ``cache`` is foldstack's resized memory map at ``size`` px, built by the same function as
    the ``train`` stage.
    """
    import pandas as pd

    from foldstack.data.cache import cached_images
    from foldstack.data.sources import write_digits

    if not (folder / "train.csv").exists():
        write_digits(folder)
    table_ = pd.read_csv(folder / "train.csv", dtype={"id": str})
    files = [str(folder / "train" / f"{i}.png") for i in table_["id"]]
    cache = cached_images(files, table_["id"].tolist(), size, digits_cache_file(folder, size))
    return files, cache, table_["label"].to_numpy()


def digits_task(folder: Path, model_name: str, fold_dir: Path, workers: int = 2, **overrides):
    """``(task, images)``: a :class:`foldstack.training.fold_task.FoldTask` for fold 0 of the
    digits pipeline's model ``model_name`` (or ``lite0``, :data:`DIGITS_LITE0`), with ``overrides`` applied to its config
    (``epochs=3``, ``image_size=32``...), and the image arrays it trains on (``{"train": cache}``),
    as ``foldstack.training.regimes.fit`` takes them.

    Fold 0 is a plain stratified fifth of the training split, as the ``folds`` stage makes it.
    """
    import pandas as pd
    from sklearn.model_selection import StratifiedKFold

    from foldstack.data.labels import Classes
    from foldstack.pipeline import parse_pipeline
    from foldstack.training.fold_task import FoldTask

    cfg = parse_pipeline(digits_pipeline())
    model = cfg.model(model_name).model_copy(update=overrides)
    _, cache, labels = digits_images(folder, model.image_size)
    classes = Classes.from_labels(pd.Series(labels), cfg.task)
    train_index, valid_index = next(StratifiedKFold(cfg.folds.k, shuffle=True, random_state=cfg.folds.seed)
                                    .split(labels, labels))
    fold_dir.mkdir(parents=True, exist_ok=True)
    task = FoldTask(model=model, task=cfg.task, metric=cfg.metric, y=classes.encode(pd.Series(labels)),
                    n_classes=len(classes), train_index=train_index, valid_index=valid_index,
                    augment=cfg.augment, caches={"train": digits_cache_file(folder, model.image_size)},
                    fold_dir=fold_dir, seed=cfg.seed, workers=workers)
    return task, {"train": cache}
