"""Augmentation per image: albumentations pipelines from the YAML, in albumentations' own
serialisation. Keras-free: the pipeline's validation and the augmentation preview use it in
processes that never import Keras. (Where the train transforms run, and their device forms:
``training.device_forms``; MixUp and CutMix of a batch: ``training.batch_mix``.)
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np

from foldstack.core.config import ModelConfig, hw


def compose(transforms: list[dict[str, Any]]) -> A.Compose:
    """An ``A.Compose`` of transforms written as ``A.to_dict`` writes them.

    Each item is ``{"__class_fullname__": "HorizontalFlip", "p": 0.5, ...}``; the list is wrapped
    in a Compose so a YAML file need not spell out the outer layer.
    """
    return A.from_dict({"transform": {"__class_fullname__": "Compose", "p": 1.0,
                                      "transforms": list(transforms)}})


def check_channels(transforms: list[dict[str, Any]], channels: int) -> None:
    """Raise ValueError naming the first transform that cannot take a ``channels``-channel
    image (array images): each is built with ``p: 1`` and run on a small one, since
    albumentations' colour transforms need RGB while most spatial ones take any channels."""
    image = np.random.default_rng(0).integers(0, 256, (32, 32, channels), dtype=np.uint8)
    for i, transform in enumerate(transforms):
        name = transform.get("__class_fullname__", "?")
        try:
            compose([{**transform, "p": 1.0}])(image=image)
        except Exception as error:  # albumentations and OpenCV raise many types on a channel count
            raise ValueError(f"[{i}] {name} cannot take {channels}-channel images (it needs RGB: 3); "
                             f"leave it out for array images ({type(error).__name__})") from None


def crop(model: ModelConfig, train: bool) -> list[dict[str, Any]]:
    """The crop of ``image_size`` out of a model's ``cache_size`` (random to train, the centre to
    validate and predict) as the first transform; none without ``cache_size``."""
    if model.cache_size is None:
        return []
    h, w = hw(model.image_size)
    name = "RandomCrop" if train else "CenterCrop"
    return [{"__class_fullname__": name, "height": h, "width": w, "p": 1.0}]
