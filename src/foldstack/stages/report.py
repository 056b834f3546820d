"""The `report` stage: one self-contained page, ``artifacts/<pipeline>/report.html``, of what the
models see and get wrong.

It reads what the other stages wrote (every model's OOF, the stack's, each fold's ``log.csv``,
``submissions/<pipeline>/index.csv`` and the stack and folds pictures) and shows: the stack
leaderboard and confusion matrix, per-class precision, recall, F1 and support, the most confused
class pairs, the most confidently wrong OOF images, Grad-CAM heatmaps of each model on its own
wrong and right OOF images, each fold's training curves, and CV against the leaderboard. A
regression has no classes: its page shows the stack's OOF predictions against the targets, the
largest OOF errors (a table and their images) and each model's Grad-CAM on them instead. Every
picture is embedded (a base64 data URI), so the page travels as one file; its CSS reads on a
phone and prints.

Grad-CAM runs each model's fold in a process of its own (:mod:`foldstack.runtime.isolate`), so
this process never imports Keras. Each OOF image is explained by the fold that never saw it.
"""

from __future__ import annotations

import base64
import html
import logging
import tempfile
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support
from tqdm.auto import tqdm

from foldstack.contracts import folds_file, predictions, stack_output, submission_index, training_log
from foldstack.core import metrics
from foldstack.core.config import ModelConfig, PipelineConfig
from foldstack.core.files import write_text
from foldstack.core.paths import Paths
from foldstack.data import tables
from foldstack.data.labels import Classes, FineClasses
from foldstack.data.arrays import ImageReader
from foldstack.data.cache import model_cache, open_images
from foldstack.plots import diagnostics, heatmaps
from foldstack.runtime import isolate
from foldstack.training.fold_task import WORKER, FoldTask, members, network_classes
from foldstack.training.meta import MetaRows

log = logging.getLogger(__name__)

EXPLAIN = f"{WORKER}:explain_images"
NAME = "report.html"
#: The most confidently wrong OOF images shown, for the stack.
WORST = 18
#: Grad-CAM per model: the most confidently wrong image of each of up to this many classes...
CAM_CLASSES = 12
#: ... and this many right ones (the most confident, of different classes where possible).
CAM_RIGHT = 6
#: How far (absolute) Grad-CAM's probabilities may be from the OOF ones (mixed precision rounds).
REPRODUCE_TOLERANCE = 0.02
#: The most confused (true, predicted) pairs listed.
PAIRS = 10


def run(cfg: PipelineConfig, paths: Paths) -> Path:
    """Write ``report.html`` under ``paths.artifacts`` and return its path.

    Raises:
        DataError: the stack output or a model's predictions are missing or disagree with folds.csv
            (run the stages before it).
    """
    metric = metrics.get(cfg.metric)
    data = predictions.load_level_two(cfg, paths)
    folds = folds_file.read(paths.folds, cfg.folds.k).set_index("id")
    stacked = stack_output.read(paths.stack)
    if data.classes.regression:
        return _write(cfg, paths, metric, partial(_regression, cfg, paths, data, folds, stacked.name))
    return _write(cfg, paths, metric, partial(_classification, cfg, paths, data, folds, stacked))


def _write(cfg: PipelineConfig, paths: Paths, metric: metrics.Metric, sections) -> Path:
    """The page: the task's own ``sections(page, pictures)``, then each model's training curves,
    CV against the leaderboard and the train augmentation."""
    page = Page(f"{cfg.name}: report")
    with tempfile.TemporaryDirectory(prefix="foldstack-report-") as scratch:
        pictures = Path(scratch)
        sections(page, pictures)
        for model in cfg.models:
            picture = _curves(paths, model, metric, pictures / f"curves-{model.name}.png")
            if picture is not None:
                page.section(f"Training curves: {model.name}", None, picture)
        index = submission_index.read(paths.submissions / submission_index.NAME)
        if index is None:
            page.section("CV against leaderboard", None, note="no submission written yet (make submit)")
        else:
            page.section("CV against leaderboard", index, diagnostics.cv_against_leaderboard(
                index, cfg.metric, pictures / "cv_lb.png"))
        page.section("Train augmentation", None, paths.artifacts / "augmentation.png")
        path = paths.artifacts / NAME
        write_text(path, page.render())
    print(f"wrote {path}")
    return path


def _regression(cfg: PipelineConfig, paths: Paths, data: predictions.LevelTwoData, folds: pd.DataFrame,
                chosen: str, page: Page, pictures: Path) -> None:
    """A regression's sections: the leaderboard, predicted against true, the largest OOF errors
    (a table, their images) and each model's Grad-CAM on its own largest errors."""
    stack_oof = stack_output.read_oof(paths.stack, data.classes, folds, paths.folds)[Classes.PREDICTION].to_numpy()
    page.section("Stack leaderboard", stack_output.read_leaderboard(paths.stack).drop(columns="chosen"),
                 paths.stack / "leaderboard.png", note=f"chosen: {chosen}")
    page.section("Predicted against true (stack OOF)", None, paths.stack / stack_output.PREDICTED)
    worst = largest_errors(data.y, stack_oof, WORST)
    page.section(f"Largest errors: {chosen} (stack OOF)", pd.DataFrame({
        "id": data.ids[worst], "fold": data.fold[worst], "true": data.y[worst], "predicted": stack_oof[worst],
        "error": stack_oof[worst] - data.y[worst]}))
    train_files = tables.load_train_table(cfg, paths).set_index("id").loc[data.ids, "path"].tolist()
    images = _train_images(cfg, paths, train_files, data.ids, cfg.models[0])
    page.section("Largest errors: images (stack OOF)", None, heatmaps.grid(
        images[worst], [f"true {data.y[r]:.4g} / pred {stack_oof[r]:.4g}" for r in worst], pictures / "worst.png"))
    for m, model in enumerate(tqdm(cfg.models, desc="grad-cam", unit="model", disable=None)):
        network_oof = data.oof[:, m]
        rows = largest_errors(data.y, network_oof[:, 0], CAM_CLASSES)
        found = _explain(cfg, paths, model, data, train_files, rows, network_oof)
        model_images = _train_images(cfg, paths, train_files, data.ids, model)
        picture = heatmaps.grid(model_images[rows], [f"true {data.y[r]:.4g} / pred {network_oof[r, 0]:.4g}" for r in rows],
                                pictures / f"cam-{model.name}.png", heatmaps=[found[r][0] for r in rows],
                                title=f"{model.name}: Grad-CAM of the prediction")
        page.section(f"Grad-CAM: {model.name} ({model.backbone}, {model.regime})", None, picture,
                     note="its largest OOF errors, each explained by the fold that never saw it; red is what "
                          "raises the prediction most")


def largest_errors(y: np.ndarray, predicted: np.ndarray, limit: int) -> np.ndarray:
    """The rows whose prediction is furthest from the target, furthest first."""
    return np.argsort(-np.abs(np.asarray(predicted) - y), kind="stable")[:limit]


def _classification(cfg: PipelineConfig, paths: Paths, data: predictions.LevelTwoData, folds: pd.DataFrame,
                    stacked: stack_output.StackOutput, page: Page, pictures: Path) -> None:
    """A classification's sections: the leaderboard, the confusion matrix, per class tables,
    confused pairs, the most confidently wrong images and each model's Grad-CAM."""
    chosen = stacked.name
    names = list(data.classes.names)
    # Multilabel: the stack's rows at its own thresholds (fitted on its OOF), the models' at 0.5.
    thresholds = None if stacked.thresholds is None else stacked.thresholds.reindex(names).to_numpy()
    stack_oof = stack_output.read_oof(paths.stack, data.classes, folds, paths.folds)[names].to_numpy(np.float64)
    multilabel = cfg.task == "multilabel"
    # The tables take class probabilities: a model's ordinal score as its rounded grade's 0/1 row.
    model_oof = [_as_classes(data.oof[:, m], len(names)) for m in range(len(data.models))]
    page.section("Stack leaderboard", stack_output.read_leaderboard(paths.stack).drop(columns="chosen"),
                 paths.stack / "leaderboard.png", note=f"chosen: {chosen}")
    page.section("OOF confusion matrix", None, paths.stack / "confusion.png")
    page.section(f"Per class: {chosen} (stack)", per_class(data.y, stack_oof, names, multilabel, thresholds),
                 note=None if thresholds is None else "each class at the stack's threshold (chosen.json)")
    for m, model in enumerate(data.models):
        page.section(f"Per class: {model}", per_class(data.y, model_oof[m], names, multilabel), folded=True,
                     note="each class at 0.5" if multilabel else None)
    if not multilabel:
        page.section("Most confused pairs (stack OOF)", confused_pairs(data.y, stack_oof, names))
    # Read once: reading the train table checks every image file is there.
    train_files = tables.load_train_table(cfg, paths).set_index("id").loc[data.ids, "path"].tolist()
    images = _train_images(cfg, paths, train_files, data.ids, cfg.models[0])
    worst = worst_rows(data.y, stack_oof, WORST, multilabel, thresholds)
    page.section("Most confidently wrong OOF images (stack)", None, heatmaps.grid(
        images[worst], [_caption(names, data.y[r], stack_oof[r]) for r in worst], pictures / "worst.png"))
    for m, model in enumerate(tqdm(cfg.models, desc="grad-cam", unit="model", disable=None)):
        picture = _gradcam(cfg, paths, model, data, train_files, data.oof[:, m], model_oof[m],
                           pictures / f"cam-{model.name}.png")
        page.section(f"Grad-CAM: {model.name} ({model.backbone}, {model.regime})", None, picture,
                     note="each image explained by the fold that never saw it, for its predicted class; "
                          "red is where that class's evidence is strongest")


# --- error analysis ------------------------------------------------------------------------------


def _as_classes(proba: np.ndarray, n_classes: int) -> np.ndarray:
    """Class probabilities as they are; an ordinal score ``(n, 1)`` as its rounded grade's 0/1 row."""
    if proba.shape[1] != 1:
        return proba
    return metrics.one_hot(metrics.hard_predictions(proba, False, n_classes=n_classes), n_classes).astype(np.float64)


def per_class(y: np.ndarray, proba: np.ndarray, names: list[str], multilabel: bool,
              thresholds: np.ndarray | None = None) -> pd.DataFrame:
    """Precision, recall, F1 and support of each class, from OOF probabilities (multilabel: each
    class predicted at its ``thresholds``, default 0.5)."""
    predicted = metrics.hard_predictions(proba, multilabel, thresholds)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, predicted, labels=None if multilabel else np.arange(len(names)), zero_division=0)
    return pd.DataFrame({"class": names, "precision": precision, "recall": recall, "f1": f1, "support": support})


def confused_pairs(y: np.ndarray, proba: np.ndarray, names: list[str], limit: int = PAIRS) -> pd.DataFrame:
    """The (true, predicted) class pairs most often confused, most first."""
    predicted = proba.argmax(axis=1)
    wrong = y != predicted
    pairs = pd.DataFrame({"true": np.asarray(names)[y[wrong]], "predicted": np.asarray(names)[predicted[wrong]]})
    counts = pairs.value_counts().rename("count").reset_index()
    counts["share of true class"] = counts["count"] / counts["true"].map(pd.Series(np.asarray(names)[y]).value_counts())
    return counts.head(limit)


def worst_rows(y: np.ndarray, proba: np.ndarray, limit: int, multilabel: bool,
               thresholds: np.ndarray | None = None) -> np.ndarray:
    """The rows wrong with the most confidence (the highest probability on a wrong class), worst
    first; a multilabel row is wrong where a class is on the wrong side of its ``thresholds``."""
    truth = metrics.one_hot(y, proba.shape[1]).astype(bool)
    if multilabel:
        wrong = (metrics.hard_predictions(proba, True, thresholds).astype(bool) != truth).any(axis=1)
    else:
        wrong = proba.argmax(axis=1) != y
    wrong_confidence = np.where(truth, -np.inf, proba).max(axis=1)
    rows = np.flatnonzero(wrong)
    return rows[np.argsort(-wrong_confidence[rows], kind="stable")][:limit]


def _caption(names: list[str], y, proba: np.ndarray) -> str:
    predicted = int(proba.argmax())
    true = names[int(y)] if np.ndim(y) == 0 else ",".join(np.asarray(names)[np.asarray(y).astype(bool)])
    return f"true {true} / pred {names[predicted]} ({proba[predicted]:.2f})"


# --- Grad-CAM ---------------------------------------------------------------------------------------


def cam_rows(y: np.ndarray, proba: np.ndarray, n_classes: int = CAM_CLASSES, n_right: int = CAM_RIGHT) -> np.ndarray:
    """Rows to explain: each class's most confidently wrong row (for up to ``n_classes``
    classes), then the ``n_right`` most confident right rows, of different classes first."""
    predicted = proba.argmax(axis=1)
    confidence = proba.max(axis=1)
    order = np.argsort(-confidence, kind="stable")
    wrong = [order[(y[order] == c) & (predicted[order] != c)][:1] for c in range(proba.shape[1])]
    wrong = np.concatenate(wrong)[:n_classes] if wrong else np.array([], dtype=int)
    right = order[predicted[order] == y[order]]
    firsts = right[~pd.Series(y[right]).duplicated().to_numpy()]
    right = np.concatenate([firsts, np.setdiff1d(right, firsts, assume_unique=True)])[:n_right]
    return np.concatenate([wrong, right]).astype(int)


def _gradcam(cfg: PipelineConfig, paths: Paths, model: ModelConfig, data: predictions.LevelTwoData,
             train_files: list[str], network_oof: np.ndarray, oof: np.ndarray, picture: Path) -> Path:
    """``network_oof``: the model's OOF output as its network gives it (probabilities, or an
    ordinal score); ``oof``: as class probabilities."""
    names = list(data.classes.names)
    multilabel = cfg.task == "multilabel"
    y_single = data.y if not multilabel else data.y.argmax(axis=1)
    rows = cam_rows(y_single, oof)
    images = _train_images(cfg, paths, train_files, data.ids, model)
    found = _explain(cfg, paths, model, data, train_files, rows, network_oof)
    titles = [f"{'WRONG ' if oof[r].argmax() != y_single[r] else ''}{_caption(names, data.y[r], oof[r])}"
              for r in rows]
    return heatmaps.grid(images[rows], titles, picture, heatmaps=[found[r][0] for r in rows],
                         title=f"{model.name}: Grad-CAM of the predicted class")


def _explain(cfg: PipelineConfig, paths: Paths, model: ModelConfig, data: predictions.LevelTwoData,
             train_files: list[str], rows: np.ndarray, network_oof: np.ndarray) -> dict:
    """Grad-CAM of the OOF ``rows``, each by the fold that never saw it (its first seed): per row
    its heatmap and explained class; warns where a fold's network does not give ``network_oof``."""
    images = _train_images(cfg, paths, train_files, data.ids, model)
    meta = None
    if model.meta is not None:  # the rows' table columns, as the network read them
        meta = MetaRows.of(tables.feature_table(cfg, paths, "train", data.ids, model.meta, f"model {model.name!r} meta"),
                           model.meta)
    found = {}
    # Under seed bagging a fold's first seed explains it; its OOF is then the mean of several runs.
    first_run = {run.fold: run for run in reversed(members(model, cfg.folds.k, cfg.seed))}
    averaged = len(cfg.augment.tta) > 1 or len(model.seeds or []) > 1
    # A network of finer classes (data.train_label) explains its own top one; its OOF is them summed.
    network_task, n_outputs = network_classes(cfg, len(data.classes))
    fine = FineClasses.of(cfg.data.label_map, data.classes) if cfg.data.train_label else None
    for fold in np.unique(data.fold[rows]):
        in_fold = rows[data.fold[rows] == fold]
        run = first_run[int(fold)]
        task = FoldTask(model=model, task=network_task, metric=cfg.metric, y=data.y, n_classes=n_outputs,
                        train_index=np.flatnonzero(data.fold != fold), valid_index=np.flatnonzero(data.fold == fold),
                        augment=cfg.augment, caches={}, fold_dir=paths.models / model.name / run.name,
                        seed=run.run_seed)
        result = isolate.call(EXPLAIN, task, np.asarray(images[in_fold]), None,
                              None if meta is None else meta.take(in_fold))
        proba = result["proba"] if fine is None else fine.summed(result["proba"])
        _check_reproduces(model, int(fold), proba, network_oof[in_fold], averaged=averaged)
        found.update({row: (heat, cls) for row, heat, cls in zip(in_fold, result["heatmaps"], result["classes"])})
    return found


def _check_reproduces(model: ModelConfig, fold: int, proba: np.ndarray, oof: np.ndarray, averaged: bool) -> None:
    """Warn where the network Grad-CAM rebuilt does not give the fold's OOF probabilities: its
    heatmaps would explain another model (e.g. a ``features`` backbone whose weights changed)."""
    gap = float(np.abs(proba - oof).max()) if len(oof) else 0.0
    if gap > REPRODUCE_TOLERANCE and not averaged:  # TTA views average into OOF, not into one view
        log.warning("%s fold %d: the network Grad-CAM explains gives probabilities up to %.3f away from its "
                    "OOF; its heatmaps may not show what the trained model saw", model.name, fold, gap)


def _train_images(cfg: PipelineConfig, paths: Paths, files: list[str], ids: np.ndarray,
                  model: ModelConfig) -> np.ndarray:
    """The training images ``files`` (rows in ``ids``'s order) as ``model`` reads them: the train stage's cache."""
    return open_images(model_cache(paths.cache, "train", files, list(ids), model, read=ImageReader.of(cfg.data)))


def _curves(paths: Paths, model: ModelConfig, metric: metrics.Metric, picture: Path) -> Path | None:
    logs = {}
    for fold_dir in sorted((paths.models / model.name).glob("fold*")):
        frame = training_log.read(fold_dir / training_log.NAME)
        if frame is not None:
            logs[fold_dir.name] = frame
    if not logs:
        return None
    return diagnostics.training_curves(logs, metric, f"{model.name}: each fold's training", picture)


# --- the page ---------------------------------------------------------------------------------------

STYLE = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1100px; padding: 0 12px 40px; color: #1b1f24; }
h1 { font-size: 1.5em; margin: 18px 0 4px; }
h2 { font-size: 1.15em; margin: 28px 0 8px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
nav { font-size: 0.9em; } nav a { margin-right: 10px; white-space: nowrap; }
img { max-width: 100%; height: auto; display: block; margin: 6px 0; }
.table { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.88em; margin: 6px 0; }
th, td { border: 1px solid #d0d7de; padding: 3px 7px; text-align: right; }
th { background: #f3f5f7; }
.note { color: #57606a; font-size: 0.9em; }
details > summary { cursor: pointer; color: #0969da; }
@media (max-width: 600px) { body { font-size: 14px; } th, td { padding: 2px 4px; } }
@media print { nav { display: none; } section { break-inside: avoid; } details { display: block; }
               body { max-width: none; } a { color: inherit; text-decoration: none; } }
"""


class Page:
    """The report's HTML, section by section: a table, a picture (embedded) and a note each."""

    def __init__(self, title: str):
        self.title = title
        self.sections: list[tuple[str, str]] = []

    def section(self, heading: str, table: pd.DataFrame | None = None, picture: Path | None = None,
                note: str | None = None, folded: bool = False) -> None:
        """Add a section; a picture that does not exist is skipped with a note saying so."""
        parts = []
        if note:
            parts.append(f'<p class="note">{html.escape(note)}</p>')
        if picture is not None:
            if picture.is_file():
                data = base64.b64encode(picture.read_bytes()).decode("ascii")
                parts.append(f'<img alt="{html.escape(heading)}" src="data:image/png;base64,{data}">')
            else:
                parts.append(f'<p class="note">{html.escape(picture.name)} not found</p>')
        if table is not None:
            rendered = table.to_html(index=False, float_format="{:.4f}".format, border=0, na_rep="")
            parts.append(f'<div class="table">{rendered}</div>')
        body = "\n".join(parts)
        if folded:
            body = f"<details><summary>show</summary>{body}</details>"
        self.sections.append((heading, body))

    def render(self) -> str:
        links = " ".join(f'<a href="#s{i}">{html.escape(h)}</a>' for i, (h, _) in enumerate(self.sections))
        blocks = "\n".join(f'<section id="s{i}"><h2>{html.escape(h)}</h2>\n{body}</section>'
                           for i, (h, body) in enumerate(self.sections))
        written = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
                f"<title>{html.escape(self.title)}</title>\n<style>{STYLE}</style></head>\n"
                f'<body><h1>{html.escape(self.title)}</h1><p class="note">written {written} by foldstack report</p>\n'
                f"<nav>{links}</nav>\n{blocks}\n</body></html>\n")
