"""A model's ``average``: the fold's ``best.weights.h5`` becomes an average of its epochs'
weights, so predict, bundle and Grad-CAM read it as any best checkpoint.

Every epoch from ``from_epoch`` on leaves its weights and held-out score in
``snapshots/epoch-<e>.weights.h5`` (:class:`EpochSnapshots`). Once every phase has run,
:func:`average_into_best` averages them -- ``swa`` all of them, ``top_k`` the ``k`` best scored,
``greedy_soup`` from the best down, each kept only if the fold's score improves (Wortsman et al.,
"Model soups", 2022) -- writes the average as ``best.weights.h5`` with the epochs that went in,
then removes the snapshots. A killed run keeps the snapshots of its backed-up epochs and trains
the others again, so the average of a resumed fold holds the same checkpoints; one killed after
the average was written finds it there and does nothing. BatchNorm's statistics are averaged
with the weights (no extra pass over the training images).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Callable

import h5py
import keras
import numpy as np

from foldstack.core.config import AverageConfig
from foldstack.core.metrics import Metric
from foldstack.training.callbacks import SCORE_ATTR, load_weights, save_weights

#: The folder of a fold's epoch snapshots, and the HDF5 attribute of the epochs averaged.
SNAPSHOTS, AVERAGED_ATTR = "snapshots", "foldstack_averaged_epochs"

_EPOCH = re.compile(r"epoch-(\d+)\.weights\.h5")


class EpochSnapshots(keras.callbacks.Callback):
    """Each epoch's weights (from ``from_epoch`` on) and its ``val_score``, for the average.

    Listed after the score; ``start`` gives the epoch this fit begins at (a resumed one's
    backup), whose snapshots and later ones a killed run may have left: they are trained again.
    """

    def __init__(self, fold_dir: Path, spec: AverageConfig, network: keras.Model, start: Callable[[], int]):
        super().__init__()
        self.folder = Path(fold_dir) / SNAPSHOTS
        self.spec, self.network, self.start = spec, network, start

    def on_train_begin(self, logs: dict | None = None) -> None:
        first = self.start()
        for epoch, path in snapshots(self.folder.parent):
            if epoch >= first:
                path.unlink()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        score = (logs or {}).get("val_score")
        if epoch >= self.spec.from_epoch and score is not None and np.isfinite(score):
            self.folder.mkdir(exist_ok=True)
            save_weights(self.network, self.folder / f"epoch-{epoch}.weights.h5", {SCORE_ATTR: score})


def snapshots(fold_dir: Path) -> list[tuple[int, Path]]:
    """The fold's epoch snapshots, by epoch."""
    folder = Path(fold_dir) / SNAPSHOTS
    found = [(int(m.group(1)), path) for path in folder.glob("epoch-*.weights.h5")
             if (m := _EPOCH.fullmatch(path.name))]
    return sorted(found)


def averaged_epochs(best: Path) -> list[int] | None:
    """The epochs a best checkpoint averages (for ``done.json``), or None for a single epoch's."""
    if not best.is_file():
        return None
    with h5py.File(best, "r") as handle:
        value = handle.attrs.get(AVERAGED_ATTR)
    return None if value is None else json.loads(value)


def average_into_best(network: keras.Model, best: Path, spec: AverageConfig, metric: Metric,
                      score: Callable[[keras.Model], float]) -> list[int] | None:
    """Write the average of the fold's snapshots as ``best`` (see the module's docstring);
    ``score(network)`` is the held-out fold's score of the weights in ``network``. Returns the
    epochs averaged; None where no epoch left a snapshot (``best`` stays the best epoch)."""
    taken = snapshots(best.parent)
    if not taken:
        return averaged_epochs(best)
    scores = {epoch: _score_of(path) for epoch, path in taken}
    weights = {epoch: _weights_of(network, path) for epoch, path in taken}
    ranked = sorted(scores, key=lambda e: scores[e], reverse=metric.greater_is_better)
    if spec.method == "swa":
        chosen = sorted(weights)
    elif spec.method == "top_k":
        chosen = sorted(ranked[:spec.k])
    else:
        chosen, soup_score = [ranked[0]], scores[ranked[0]]
        for epoch in ranked[1:]:
            network.set_weights(_mean([weights[e] for e in [*chosen, epoch]]))
            tried = score(network)
            if metric.better(tried, soup_score):
                chosen, soup_score = [*chosen, epoch], tried
        chosen = sorted(chosen)
    network.set_weights(_mean([weights[e] for e in chosen]))
    save_weights(network, best, {SCORE_ATTR: score(network), AVERAGED_ATTR: json.dumps(chosen)})
    shutil.rmtree(best.parent / SNAPSHOTS)
    return chosen


def _score_of(path: Path) -> float:
    with h5py.File(path, "r") as handle:
        return float(handle.attrs[SCORE_ATTR])


def _weights_of(network: keras.Model, path: Path) -> list[np.ndarray]:
    load_weights(network, path)
    return [np.asarray(w) for w in network.get_weights()]


def _mean(sets: list[list[np.ndarray]]) -> list[np.ndarray]:
    """The element-wise mean of weight lists (integer counters keep their first value's type)."""
    return [np.mean(arrays, axis=0).astype(arrays[0].dtype) for arrays in zip(*sets)]
