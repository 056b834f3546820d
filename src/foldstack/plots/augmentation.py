"""A picture of what the model will see: training images through the training augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from foldstack.core.config import PipelineConfig
from foldstack.core.files import atomic_path
from foldstack.data.cache import size_name
from foldstack.data.arrays import ImageReader, display_rgb
from foldstack.data.images import resize
from foldstack.training.augment import compose, crop

ROWS = 4
VIEWS = 5  # the original, then this many augmented draws of it


def augmentation_preview(cfg: PipelineConfig, table: pd.DataFrame, path: Path, seed: int = 0) -> Path:
    """Write a grid PNG: each row one training image (one class per row where possible), first
    as the model's input size, then ``VIEWS`` draws of the train augmentation.

    The size is the first model's ``image_size``, so the picture shows the resolution the model
    really gets.
    """
    model = cfg.models[0]
    size = model.cached_size  # with cache_size, each draw is a random crop of image_size from it
    transform = compose([*crop(model, train=True), *cfg.augment.train])
    transform.set_random_seed(seed)
    rows = table.groupby("label", sort=True).head(1).head(ROWS)
    figure = Figure(figsize=(1.6 * (VIEWS + 1), 1.6 * len(rows)))
    axes = figure.subplots(len(rows), VIEWS + 1, squeeze=False)
    read = ImageReader.of(cfg.data)
    for r, (_, row) in enumerate(rows.iterrows()):
        image = resize(read(row["path"]), size)
        views = [image] + [transform(image=image)["image"] for _ in range(VIEWS)]
        for c, view in enumerate(views):
            axes[r, c].imshow(display_rgb(view), interpolation="nearest")
            axes[r, c].set_axis_off()
            if c == 0:
                axes[r, c].set_title(f"{row['label']} (input)", fontsize=8)
    figure.suptitle(f"{cfg.name}: train augmentation at {size_name(model.image_size)}px", fontsize=10)
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=80)
    return path
