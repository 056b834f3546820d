"""Pictures of the stacking stage: the leaderboard with each candidate's fold-wise spread, and
the chosen candidate's OOF confusion matrix (a regression: its OOF predictions against the targets).

Figures are built with matplotlib's object API (``Figure``), which renders with Agg and leaves
pyplot's global state alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from foldstack.core.files import atomic_path
from foldstack.core.metrics import Metric, hard_predictions, one_hot

#: A confusion matrix wider than this is unreadable: show the most confused classes instead.
MAX_CLASSES = 20


def leaderboard(board: pd.DataFrame, metric: Metric, path: Path) -> None:
    """Every candidate's fold scores as dots and its mean +/- std as a diamond, best at the top."""
    fold_columns = [column for column in board.columns if column.startswith("fold_")]
    rows = board.iloc[::-1]  # y grows upwards; the best candidate is the first row
    fig = Figure(figsize=(7, 1.0 + 0.45 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    positions = np.arange(len(rows))
    for position, (_, row) in zip(positions, rows.iterrows()):
        ax.plot(row[fold_columns].astype(float), np.full(len(fold_columns), position), "o",
                color="#8fb0d9", markersize=5)
    ax.errorbar(rows["cv_mean"], positions, xerr=rows["cv_std"], fmt="D", color="#1f4e8c", capsize=3)
    ax.set_yticks(positions, [f"{name}  *" if chosen else name
                              for name, chosen in zip(rows["candidate"], rows["chosen"])])
    scores = board[fold_columns].to_numpy(float)
    margin = 0.1 * max(np.ptp(scores), 1e-3)
    ax.set_xlim(scores.min() - margin, scores.max() + margin)
    ax.grid(axis="x", alpha=0.3)
    direction = "higher" if metric.greater_is_better else "lower"
    ax.set_xlabel(f"{metric.name} ({direction} is better); dots: folds, diamond: mean +/- std, *: chosen")
    _save(fig, path)


def predicted_against_true(y: np.ndarray, predicted: np.ndarray, title: str, path: Path) -> None:
    """A regression's OOF predictions (y axis) against the targets (x axis), with the diagonal
    where a perfect model's points would lie."""
    fig = Figure(figsize=(5.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(y, predicted, s=10, alpha=0.6, color="#1f4e8c")
    low, high = float(min(y.min(), predicted.min())), float(max(y.max(), predicted.max()))
    ax.plot([low, high], [low, high], color="#c0392b", linewidth=1, label="predicted = true")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted (out of fold)")
    ax.set_title(title)
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    _save(fig, path)


def confusion(y: np.ndarray, proba: np.ndarray, classes: tuple[str, ...], title: str, path: Path,
              thresholds: tuple[float, ...] | None = None) -> None:
    """Counts of true class (rows) against predicted class (columns).

    Multilabel counts every (true, predicted) pair of a row, which for single-label rows is the
    usual confusion matrix; a class is predicted at its threshold (``thresholds``, default 0.5). With more than :data:`MAX_CLASSES` classes only the classes with the
    most off-diagonal counts are shown.
    """
    multilabel = y.ndim == 2
    predicted = one_hot(hard_predictions(proba, multilabel, thresholds), len(classes))
    matrix = one_hot(y, len(classes)).T @ predicted
    shown = _most_confused(matrix, MAX_CLASSES)
    if len(shown) < len(classes):
        title += f" (the {len(shown)} most confused of {len(classes)} classes)"
    size = 3 + 0.4 * len(shown)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.add_subplot()
    display = ConfusionMatrixDisplay(matrix[np.ix_(shown, shown)], display_labels=[classes[i] for i in shown])
    display.plot(ax=ax, colorbar=False, cmap="Blues", xticks_rotation="vertical")
    ax.set_title(title)
    _save(fig, path)


def _most_confused(matrix: np.ndarray, limit: int) -> np.ndarray:
    if len(matrix) <= limit:
        return np.arange(len(matrix))
    off = matrix - np.diag(np.diag(matrix))
    confusion_count = off.sum(axis=0) + off.sum(axis=1)
    return np.sort(np.argsort(-confusion_count, kind="stable")[:limit])


def _save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
