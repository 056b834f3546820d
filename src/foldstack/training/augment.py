"""Augmentation per image: albumentations pipelines from the YAML, in albumentations' own
serialisation. Keras-free: the pipeline's validation and the augmentation preview use it in
processes that never import Keras. (Where the train transforms run, and their device forms:
``training.device_forms``; MixUp and CutMix of a batch: ``training.batch_mix``.)
"""

from __future__ import annotations

from typing import Any

import albumentations as A


def compose(transforms: list[dict[str, Any]]) -> A.Compose:
    """An ``A.Compose`` of transforms written as ``A.to_dict`` writes them.

    Each item is ``{"__class_fullname__": "HorizontalFlip", "p": 0.5, ...}``; the list is wrapped
    in a Compose so a YAML file need not spell out the outer layer.
    """
    return A.from_dict({"transform": {"__class_fullname__": "Compose", "p": 1.0,
                                      "transforms": list(transforms)}})
