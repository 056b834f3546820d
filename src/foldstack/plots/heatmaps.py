"""Pictures of what a network looks at: Grad-CAM heatmaps (``training.gradcam``) over images."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from foldstack.core.files import atomic_path
from foldstack.data.arrays import display_rgb

#: How opaque the heatmap is over the image.
ALPHA = 0.45


def overlay(image: np.ndarray, heatmap: np.ndarray, path: Path, title: str | None = None) -> Path:
    """Write one image with its heatmap (``(h, w)`` in [0, 1], red where the class's evidence
    is strongest) laid over it in colour, beside the image alone."""
    figure = Figure(figsize=(4, 2.3), layout="constrained")
    plain, laid = figure.subplots(1, 2)
    plain.imshow(display_rgb(image), interpolation="nearest")
    _draw(laid, image, heatmap)
    for ax in (plain, laid):
        ax.set_axis_off()
    if title:
        figure.suptitle(title, fontsize=9)
    _save(figure, path)
    return path


def grid(images: Sequence[np.ndarray], titles: Sequence[str], path: Path,
         heatmaps: Sequence[np.ndarray] | None = None, columns: int = 6, title: str | None = None) -> Path:
    """Write images in a grid, each with its title (e.g. ``true 3 / predicted 8 (0.97)``), with
    their heatmaps laid over them when given."""
    rows = max(1, -(-len(images) // columns))
    figure = Figure(figsize=(1.7 * columns, 1.9 * rows + (0.4 if title else 0)), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= len(images):
            continue
        if heatmaps is None:
            ax.imshow(display_rgb(images[i]), interpolation="nearest")
        else:
            _draw(ax, images[i], heatmaps[i])
        ax.set_title(titles[i], fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    _save(figure, path)
    return path


def _draw(ax, image: np.ndarray, heatmap: np.ndarray) -> None:
    height, width = np.asarray(image).shape[:2]
    extent = (0, width, height, 0)  # the heatmap covers the image exactly, whatever its resolution
    ax.imshow(display_rgb(image), interpolation="nearest", extent=extent)
    ax.imshow(heatmap, cmap="jet", alpha=ALPHA, vmin=0.0, vmax=1.0, interpolation="bilinear", extent=extent)


def _save(figure: Figure, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=100)
