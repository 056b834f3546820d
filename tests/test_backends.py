"""The same pipeline trains and predicts under KERAS_BACKEND=jax as under the default TensorFlow.

Keras picks its backend once per process, so each backend runs the stages in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from test_make import TINY_PIPELINE


#: ``make``'s tiny pipeline, its models at batch size 8 and a learning rate of 0.01: as they are
#: there (3 to 4 steps an epoch) they end near chance (OOF accuracy 0.13-0.18), too close to 0.1
#: for a floor to tell learning from luck.
PIPELINE = {**TINY_PIPELINE, "models": [{**model, "batch_size": 8, "lr": 0.01} for model in TINY_PIPELINE["models"]]}

#: The OOF accuracy each model must beat on either backend (chance is 0.1). Measured with folds
#: seeds 1, 2 and 3: cnn 0.781-0.838 (TensorFlow), 0.787-0.869 (JAX); lite0 0.656-0.725
#: (TensorFlow), 0.669-0.700 (JAX).
ACCURACY_FLOOR = {"cnn": 0.5, "lite0": 0.4}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_pipeline_trains_under_backend(tmp_path: Path, backend: str) -> None:
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(PIPELINE))
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONUNBUFFERED": "1"}
    for stage in ("download", "folds", "train", "predict"):
        run = subprocess.run([sys.executable, "-m", "foldstack.cli", stage, "--pipeline", str(tmp_path / "tiny.yaml"),
                              "--root", str(tmp_path), "--verbose"], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
        if stage == "train":
            train = run
    assert f"backend {backend}" in train.stderr  # the run really used that backend
    folds = pd.read_csv(tmp_path / "artifacts" / "tiny" / "folds.csv", dtype={"id": str, "label": str})
    classes = [str(d) for d in range(10)]
    for model, floor in ACCURACY_FLOOR.items():
        oof = pd.read_parquet(tmp_path / "artifacts" / "tiny" / "oof" / f"{model}.parquet")
        assert oof["id"].tolist() == folds["id"].tolist()
        proba = oof[classes].to_numpy()
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-4)
        accuracy = float(np.mean(np.array(classes)[proba.argmax(axis=1)] == folds["label"].to_numpy()))
        assert accuracy > floor, f"{model} under {backend}: OOF accuracy {accuracy:.3f}, not above {floor}"
        test = pd.read_parquet(tmp_path / "artifacts" / "tiny" / "test" / f"{model}.parquet")
        np.testing.assert_allclose(test[classes].to_numpy().sum(axis=1), 1.0, rtol=1e-4)
