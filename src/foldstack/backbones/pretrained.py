"""Which pretrained weight files a backbone loads, found by building it once and watching.

A Kaggle kernel with Internet off cannot download ImageNet weights, so the bundle carries the very
files the pipeline's backbones read. Rather than keep a table of file names per backbone (which
Keras may rename in any release), :func:`imagenet_files` builds the backbone with
``weights="imagenet"`` and records every file Keras's downloader hands back (``~/.keras/models``)
and every converted EfficientNet-Lite file (foldstack's weights cache). Keras is imported here,
so call it in a child process (``runtime.isolate``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from foldstack.backbones import efficientnet_lite, hub
from foldstack.backbones.spec import create
from foldstack.core.config import hw

#: Where each kind of recorded file goes back to on the kernel: Keras's cache, foldstack's, or
#: (a hub preset's files, under their preset's key: ``hub.bundled_name``) the hub family's.
KERAS, FOLDSTACK, HUB = "keras", "foldstack", "hub"


def imagenet_files(backbone: str, image_size: int | tuple[int, int], send: Callable[[Any], None] | None = None) -> list[tuple[str, str]]:
    """Build ``backbone`` with ImageNet weights; the weight files it read, as ``(kind, path)``.

    Args:
        backbone: a registered backbone name.
        image_size: the input size the pipeline builds it at (some files depend on it).
        send: unused; ``runtime.isolate`` hands every child function one.

    Returns:
        ``(KERAS, path)`` for a file under Keras's cache, ``(FOLDSTACK, path)`` for one under
        :func:`foldstack.backbones.efficientnet_lite.weights_cache_dir`; in the order read.
        A hub backbone's are every file of its preset, ``(HUB, path)``: the kernel builds it from
        them whatever its ``weights`` (the architecture is in the preset's ``config.json``).
    """
    if hub.is_hub(backbone):
        return [(HUB, str(path.resolve())) for path in hub.preset_files(backbone)]
    from keras.src.utils import file_utils  # the module keras.applications fetch weights through

    found: list[tuple[str, str]] = []
    keras_get_file, lite_weights = file_utils.get_file, efficientnet_lite.imagenet_weights

    def recorded_get_file(*args, **kwargs):
        path = keras_get_file(*args, **kwargs)
        found.append((KERAS, str(Path(path).resolve())))
        return path

    def recorded_lite_weights(variant):
        path = lite_weights(variant)
        found.append((FOLDSTACK, str(Path(path).resolve())))
        return path

    file_utils.get_file, efficientnet_lite.imagenet_weights = recorded_get_file, recorded_lite_weights
    try:
        create(backbone, weights="imagenet", input_shape=(*hw(image_size), 3))
    finally:
        file_utils.get_file, efficientnet_lite.imagenet_weights = keras_get_file, lite_weights
    return list(dict.fromkeys(found))


def keras_cache_dir() -> Path:
    """Where Keras looks for downloaded weights: ``$KERAS_HOME/models``, else ``~/.keras/models``."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser() / "models"


def cache_dir(kind: str) -> Path:
    """The cache that a recorded file of ``kind`` (``KERAS``, ``FOLDSTACK``, ``HUB``) is read from."""
    if kind == HUB:
        return hub.bundled_dir()
    return keras_cache_dir() if kind == KERAS else efficientnet_lite.weights_cache_dir()
