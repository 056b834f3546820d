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


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_pipeline_trains_under_backend(tmp_path: Path, backend: str) -> None:
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_PIPELINE))
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONUNBUFFERED": "1"}
    for stage in ("download", "folds", "train", "predict"):
        run = subprocess.run([sys.executable, "-m", "foldstack.cli", stage, "--pipeline", str(tmp_path / "tiny.yaml"),
                              "--root", str(tmp_path), "--verbose"], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
        if stage == "train":
            train = run
    assert f"backend {backend}" in train.stderr  # the run really used that backend
    folds = pd.read_csv(tmp_path / "artifacts" / "tiny" / "folds.csv", dtype={"id": str})
    for model in ("cnn", "lite0"):
        oof = pd.read_parquet(tmp_path / "artifacts" / "tiny" / "oof" / f"{model}.parquet")
        assert oof["id"].tolist() == folds["id"].tolist()
        proba = oof[[str(d) for d in range(10)]].to_numpy()
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-4)
        test = pd.read_parquet(tmp_path / "artifacts" / "tiny" / "test" / f"{model}.parquet")
        np.testing.assert_allclose(test[[str(d) for d in range(10)]].to_numpy().sum(axis=1), 1.0, rtol=1e-4)
