"""Where the folds run (issue #16): the train stage's wall time on a tiny digits competition
(small_cnn, 16 px, 4 folds), side by side in one process.

* fold fan-out: ``compute.devices: 2`` (two folds at once, each in its own process and device
  slot) against ``devices: 1``. On a CPU machine the two slots share its cores, so the speed-up
  is what the idle time between and inside the folds leaves (start-up, scoring, checkpoints);
  on two GPUs each fold has its own device.
* data parallel: ``data_parallel: true`` over two virtual CPU devices against one device, as the
  largest gap between their OOF probabilities (the backend is ``KERAS_BACKEND``'s: run it once
  with ``tensorflow``, once with ``jax``).
* Ray: ``executor: ray`` on a local cluster of two worker processes against the local executor
  with two slots, as the extra seconds per (model, fold) job. A Ray task starts a fresh worker
  process (one per fold, so its memory goes back): it imports TensorFlow, where a local fold
  process is forked from a server that imported it once.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import Row, timed

FOLDS = 4
PIPELINE = {
    "name": "bench-executors",
    "task": "multiclass",
    "metric": "accuracy",
    "data": {"source": {"type": "embedded", "dataset": "digits", "limit": 400}},
    "folds": {"k": FOLDS, "seed": 0},
    "models": [{"name": "cnn", "backbone": "small_cnn", "weights": "none", "image_size": 16, "regime": "scratch",
                "epochs": 3, "batch_size": 32, "lr": 0.003}],
}


def _train(folder: Path, name: str, compute: dict) -> tuple[float, np.ndarray]:
    """Seconds of ``foldstack train`` for the pipeline with ``compute``, in a fresh folder, and
    the OOF probabilities."""
    from foldstack.core.paths import Paths
    from foldstack.pipeline import parse_pipeline
    from foldstack.stages import download, folds, train

    raw = copy.deepcopy(PIPELINE)
    raw["compute"] = compute
    cfg = parse_pipeline(raw)
    paths = Paths.for_pipeline(cfg.name, folder / name)
    download.run(cfg, paths)
    folds.run(cfg, paths)
    seconds, _ = timed(train.run, cfg, paths, workers=1)
    return seconds, pd.read_parquet(paths.oof / "cnn.parquet").iloc[:, 2:].to_numpy()


def run(folder: Path, ray: bool = True, data_parallel: bool = True) -> list[Row]:
    from foldstack.runtime import isolate
    from foldstack.training.fold_task import WORKER

    logging.getLogger("foldstack").setLevel(logging.WARNING)
    isolate.call(f"{WORKER}:gpu_count")  # the fork server started (TensorFlow imported) before any timing
    one, oof = _train(folder, "one", {"devices": 1})
    two, fanned = _train(folder, "two", {"devices": 2})
    rows = [Row("executors", f"fold fan-out, {FOLDS} folds: 2 device slots / 1 (CPU)",
                f"{one:.1f} s vs {two:.1f} s, OOF {'bitwise equal' if np.array_equal(oof, fanned) else 'DIFFERENT'}",
                one / two)]
    if data_parallel:
        split_seconds, split = _train(folder, "split", {"devices": 2, "data_parallel": True})
        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        rows.append(Row("executors", f"data parallel ({backend}), 2 virtual CPU devices / 1 device",
                        f"{split_seconds:.1f} s vs {one:.1f} s, largest OOF gap {np.abs(split - oof).max():.2g}",
                        split_seconds / one))
    if ray:
        import ray as ray_module

        ray_module.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="ERROR",
                        log_to_driver=False)
        try:
            on_ray, _ = _train(folder, "ray", {"executor": "ray"})
        finally:
            ray_module.shutdown()
        per_job = (on_ray - two) / FOLDS
        rows.append(Row("executors", f"Ray, 2 workers / local, 2 slots, {FOLDS} folds",
                        f"{on_ray:.1f} s vs {two:.1f} s: {per_job:+.1f} s per fold job", on_ray / two))
    return rows
