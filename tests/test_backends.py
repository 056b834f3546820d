"""The tiny pipeline of ``make`` trains and predicts under KERAS_BACKEND=jax as it does under the
default TensorFlow (tests/test_make.py holds it to the same accuracy floors there).

Keras picks its backend once per process, so the stages run in subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_make import TINY_PIPELINE, assert_learnt


@pytest.mark.slow
def test_pipeline_trains_under_jax(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_PIPELINE))
    cache = tmp_path / "foldstack-cache"
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONUNBUFFERED": "1", "FOLDSTACK_CACHE": str(cache)}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    for stage in ("download", "folds", "train", "predict"):
        run = subprocess.run([sys.executable, "-m", "foldstack.cli", stage, "--pipeline", str(tmp_path / "tiny.yaml"),
                              "--root", str(tmp_path), "--verbose"], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
        if stage == "train":
            train = run
    assert "backend jax" in train.stderr  # the stage process said so too
    assert_learnt(tmp_path, "jax")
    # What XLA compiled was kept for the next fold process (runtime/device.keep_compiled).
    assert any((cache / "xla").iterdir()), "no compiled program in the cache"
