"""Pictures of how training went: each fold's curves, and CV against the leaderboard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from foldstack.core.files import atomic_path
from foldstack.core.metrics import Metric


def training_curves(logs: dict[str, pd.DataFrame], metric: Metric, title: str, path: Path) -> Path:
    """Loss (left) and held-out ``val_score`` (right) per epoch, one line per fold (``logs``:
    fold name -> its ``log.csv``), each fold's best epoch marked with a star."""
    figure = Figure(figsize=(8, 3), layout="constrained")
    loss_ax, score_ax = figure.subplots(1, 2)
    for (name, log), colour in zip(logs.items(), _colours(len(logs))):
        loss_ax.plot(log["epoch"], log["loss"], color=colour, label=f"{name} train")
        if "val_loss" in log.columns:
            loss_ax.plot(log["epoch"], log["val_loss"], color=colour, linestyle="--", label=f"{name} valid")
        if "val_score" in log.columns and log["val_score"].notna().any():
            scores = log["val_score"].to_numpy(float)
            best = int(np.nanargmax(scores) if metric.greater_is_better else np.nanargmin(scores))
            score_ax.plot(log["epoch"], scores, color=colour, marker=".", label=name)
            score_ax.plot(log["epoch"].iloc[best], scores[best], marker="*", markersize=14, color=colour,
                          markeredgecolor="black", linestyle="none")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="training loss")
    direction = "higher" if metric.greater_is_better else "lower"
    score_ax.set(xlabel="epoch", ylabel=metric.name)
    score_ax.set_title(f"held-out {metric.name}\n({direction} is better; star: best epoch)", fontsize=9)
    for ax in (loss_ax, score_ax):
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    _save(figure, path)
    return path


def cv_against_leaderboard(index: pd.DataFrame, metric_name: str, path: Path) -> Path:
    """Each written submission's CV (x) against its local and, where known, public leaderboard
    score (y), with the line where they agree."""
    figure = Figure(figsize=(5, 4), layout="constrained")
    ax = figure.add_subplot()
    cv = index["cv_mean"].astype(float)
    shown = [cv.to_numpy()]
    for column, marker, label in (("local_lb", "o", "local LB"), ("public_lb", "s", "public LB")):
        if column in index.columns and index[column].notna().any():
            score = pd.to_numeric(index[column], errors="coerce")
            ax.scatter(cv, score, marker=marker, label=label)
            shown.append(score.dropna().to_numpy())
    values = np.concatenate(shown)
    low, high = float(values.min()), float(values.max())
    margin = max(0.05 * (high - low), 1e-3)
    ax.plot([low - margin, high + margin], [low - margin, high + margin], color="grey", linestyle=":",
            label="LB = CV")
    ax.set(xlabel=f"CV {metric_name}", ylabel=f"leaderboard {metric_name}", title="CV against leaderboard")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(figure, path)
    return path


def _colours(n: int) -> list:
    return [f"C{i % 10}" for i in range(n)]


def _save(figure: Figure, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=100)
