"""Every registered backbone builds, runs and cuts where its spec says; the registry stays light.

All of them, the 350M-parameter ConvNeXtXLarge included: a registry entry that does not build is a
bug whoever hits it first. Building is the cost (seconds per hundred layers on a CPU), about
three minutes for the whole registry on two cores.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from foldstack import backbones


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    yield
    import keras

    # Forty models in one process would otherwise keep every graph (ConvNeXtXLarge: 350M params).
    keras.backend.clear_session()


@pytest.mark.parametrize("name", backbones.names())
def test_backbone_builds_and_runs(name: str) -> None:
    spec = backbones.get(name)
    size = spec.min_size
    model = backbones.create(name, weights=None, input_shape=(size, size, 3))

    out = np.asarray(model(np.full((1, size, size, 3), 128.0, dtype="float32"), training=False))

    assert out.ndim == 4 and out.shape[0] == 1 and out.shape[-1] > 0
    assert np.isfinite(out).all()
    inner = model.layers[-1]  # the backbone itself, after the preprocessing ops
    assert inner.output.shape[1:] == out.shape[1:]
    assert len(spec.cut_layers) >= 2
    depths = [[layer.name for layer in inner.layers].index(cut) for cut in spec.cut_layers]
    assert depths == sorted(depths), "cut_layers go from shallow to deep"


def test_weights_none_string_means_random() -> None:
    model = backbones.create("efficientnet_lite0", weights="none", input_shape=(32, 32, 3))
    assert model.output.shape == (None, 1, 1, 1280)


def test_unknown_backbone_lists_known_names() -> None:
    with pytest.raises(backbones.UnknownBackboneError) as excinfo:
        backbones.get("resnet9000")
    message = str(excinfo.value)
    assert "resnet9000" in message and "efficientnet_lite0" in message and "convnext_tiny" in message


def test_registry_covers_the_families() -> None:
    families = {backbones.get(name).family for name in backbones.names()}
    assert families >= {"VGG", "ResNet", "ResNetV2", "Inception", "Xception", "DenseNet", "MobileNetV2",
                        "MobileNetV3", "EfficientNet", "EfficientNetV2", "ConvNeXt", "EfficientNet-Lite"}


def test_importing_the_registry_does_not_import_keras() -> None:
    code = ("import sys; from foldstack import backbones; backbones.names(); backbones.get('resnet50'); "
            "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules, 'keras was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_describe_counts_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    # Building the whole registry again would double this file's runtime; two specs show the shape.
    monkeypatch.setattr(backbones.spec, "names", lambda: ["efficientnet_lite0", "mobilenet_v2"])
    rows = list(backbones.describe())
    assert [row["name"] for row in rows] == ["efficientnet_lite0", "mobilenet_v2"]
    assert rows[0]["family"] == "EfficientNet-Lite" and rows[0]["default_size"] == 224
    # Keras's MobileNetV2 without its top has 2,257,984 parameters.
    assert rows[1]["parameters"] == 2_257_984
