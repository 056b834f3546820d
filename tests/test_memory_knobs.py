"""accumulate, remat and precision: a model's memory and batch knobs (issue 23)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import make_config
from foldstack.core.config import ConfigError
from foldstack.core.errors import FoldstackError
from foldstack.runtime import device
from foldstack.training.fold_task import FoldTask
from foldstack.training.network import compile_for, features_network
from foldstack.training.regimes import image_network

LINEAR = {"name": "m", "backbone": "mobilenet_v2", "weights": "none", "image_size": 32, "regime": "features",
          "dropout": 0.0, "weight_decay": 0.0}


def _task(model: dict, tmp_path: Path, n_classes: int = 3) -> FoldTask:
    cfg = make_config(models=[model])
    return FoldTask(model=cfg.models[0], task=cfg.task, metric=cfg.metric, y=np.zeros(4, dtype=int),
                    n_classes=n_classes, train_index=np.arange(2), valid_index=np.arange(2, 4), augment=cfg.augment,
                    caches={}, fold_dir=tmp_path, seed=0)


def _trained_weights(task: FoldTask, x: np.ndarray, y: np.ndarray, batch_size: int) -> list[np.ndarray]:
    keras.utils.set_random_seed(0)
    network = features_network(task, x.shape[1])
    compile_for(task, network, lr=0.05, epochs=1, steps_per_epoch=len(x) // batch_size)
    network.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    return [w.copy() for w in network.get_weights()]


def test_accumulating_n_batches_of_b_is_one_batch_of_n_times_b(tmp_path: Path) -> None:
    """A linear model (softmax regression): 4 batches of 8 under ``accumulate: 4`` make the same
    step as one batch of 32, and not the same as 4 plain steps of 8."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 5)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 3, 32), 3)
    one_batch = _trained_weights(_task(LINEAR, tmp_path), x, y, batch_size=32)
    accumulated = _trained_weights(_task({**LINEAR, "accumulate": 4}, tmp_path), x, y, batch_size=8)
    plain = _trained_weights(_task(LINEAR, tmp_path), x, y, batch_size=8)
    for a, b in zip(one_batch, accumulated):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert max(np.abs(a - b).max() for a, b in zip(one_batch, plain)) > 1e-3


def test_knobs_are_left_out_of_the_dump_while_off() -> None:
    assert not {"accumulate", "remat", "precision"} & set(make_config().models[0].model_dump(mode="json"))
    assert "accumulate" not in make_config(models=[{**LINEAR, "accumulate": 1}]).models[0].model_dump(mode="json")
    with pytest.raises(ConfigError, match=r"models.0.precision = 'float8': Input should be 'mixed_float16', "
                                          r"'mixed_bfloat16' or 'float32'"):
        make_config(models=[{**LINEAR, "precision": "float8"}])
    with pytest.raises(ConfigError, match=r"models.0.accumulate = 0: Input should be greater than or equal to 1"):
        make_config(models=[{**LINEAR, "accumulate": 0}])


def test_precision_per_model_and_refused_where_the_machine_cannot(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        assert device.configure().precision == "float32"  # no GPU here: float32 by default
        assert device.configure("mixed_bfloat16", training=True).precision == "mixed_bfloat16"
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        with pytest.raises(FoldstackError, match=r"^precision: mixed_float16 needs a GPU \(this machine has none"):
            device.configure("mixed_float16", training=True)
        assert device.configure("mixed_float16").precision == "float32"  # predicting trained weights: float32
        monkeypatch.setattr(device, "gpu_count", lambda: 1)
        assert device.configure().precision == "mixed_float16"  # a GPU's default, as before
        assert device.configure("float32").precision == "float32"  # no longer forced
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_remat_builds_a_rematerialised_network_or_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = {"name": "m", "backbone": "small_cnn", "weights": "none", "image_size": 32, "regime": "scratch"}
    network, _ = image_network(_task({**model, "remat": True}, tmp_path))
    modes = {layer._remat_mode.mode for layer in network._flatten_layers() if layer._remat_mode is not None}
    assert modes == {"activations"}
    network.compile(optimizer="sgd", loss="categorical_crossentropy")
    network.fit(np.zeros((4, 32, 32, 3), "float32"), keras.utils.to_categorical([0, 1, 2, 0], 3), epochs=1,
                verbose=0)  # a backbone trains under remat (Keras's "full" mode fails here)
    plain, _ = image_network(_task(model, tmp_path))
    assert all(layer._remat_mode is None for layer in plain._flatten_layers())
    monkeypatch.setattr(keras.config, "backend", lambda: "numpy")
    with pytest.raises(FoldstackError, match=r"^remat: true is not supported by Keras's numpy backend"):
        device.remat_scope(True)
