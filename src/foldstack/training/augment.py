"""Augmentation: per image, albumentations pipelines from the YAML (their own serialisation);
per training batch, MixUp and CutMix (:func:`mix_batch`)."""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np

from foldstack.core.config import CutMixConfig, MixUpConfig, ModelConfig


def compose(transforms: list[dict[str, Any]]) -> A.Compose:
    """An ``A.Compose`` of transforms written as ``A.to_dict`` writes them.

    Each item is ``{"__class_fullname__": "HorizontalFlip", "p": 0.5, ...}``; the list is wrapped
    in a Compose so a YAML file need not spell out the outer layer.
    """
    return A.from_dict({"transform": {"__class_fullname__": "Compose", "p": 1.0,
                                      "transforms": list(transforms)}})


class BatchMix:
    """MixUp or CutMix of whole training batches (:func:`mix_batch`), as a model's YAML sets them.

    The loader hands it each training batch with a generator seeded by ``(seed, epoch, batch)``,
    so a run repeats exactly whatever order its threads build batches in; validation and TTA
    batches are never mixed.
    """

    def __init__(self, mixup: MixUpConfig | None, cutmix: CutMixConfig | None):
        self.mixup = mixup
        self.cutmix = cutmix

    @classmethod
    def of(cls, model: ModelConfig) -> BatchMix | None:
        """The model's batch mixing, or None when it mixes nothing."""
        return cls(model.mixup, model.cutmix) if model.mixup or model.cutmix else None

    def __call__(self, images: np.ndarray, targets: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return mix_batch(images, targets, self.mixup, self.cutmix, rng)


def mix_batch(images: np.ndarray, targets: np.ndarray, mixup: MixUpConfig | None, cutmix: CutMixConfig | None,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A batch's images and targets, mixed by MixUp (probability ``mixup.p``), else by CutMix
    (``cutmix.p``), else untouched: one draw per batch picks at most one of them.

    Each image ``i`` is mixed with image ``perm[i]`` of the same batch (a random permutation)
    and its target becomes ``w * y[i] + (1 - w) * y[perm[i]]``: MixUp blends the pixels with the
    same ``w ~ Beta(alpha, alpha)``; CutMix pastes a box of ``perm[i]`` whose side is
    ``sqrt(1 - w)`` of the image's, and ``w`` is then the share of pixels it did not cover
    (exact on the pixel grid, so small boxes are counted right).

    The draws are numpy's; the mixing itself is Keras's ``MixUp`` and ``CutMix`` layers'
    (``transform_images``, ``transform_labels``). Their own draws are not used: with an integer
    seed CutMix places a box's x and y from the same random number. Mixed images are float32
    in the images' range (0-255), which the network's input takes as it takes uint8.
    """
    import keras

    n = len(images)
    choice = rng.random()
    if mixup is not None and choice < mixup.p:
        weight = rng.beta(mixup.alpha, mixup.alpha, n).astype(np.float32)
        layer, transformation = keras.layers.MixUp(), {"mix_weight": weight}
    elif cutmix is not None and choice < (mixup.p if mixup else 0.0) + cutmix.p:
        masks = _boxes(images.shape[1:3], rng.beta(cutmix.alpha, cutmix.alpha, n), rng)
        weight = 1.0 - masks.mean(axis=(1, 2)).astype(np.float32)
        masks = np.repeat(masks[..., None], images.shape[-1], axis=-1)
        layer, transformation = keras.layers.CutMix(), {"mix_weight": weight, "batch_masks": masks}
    else:
        return images, targets
    transformation["permutation_order"] = rng.permutation(n)
    mixed = layer.transform_images(images, transformation)
    mixed_targets = layer.transform_labels(targets.astype(np.float32), transformation)
    return (keras.ops.convert_to_numpy(mixed).astype(np.float32),
            keras.ops.convert_to_numpy(mixed_targets).astype(np.float32))


def _boxes(shape: tuple[int, int], kept: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One boolean ``(height, width)`` mask per kept share: a box of ``sqrt(1 - kept)`` of each
    side, in pixels, placed at random wholly inside the image."""
    height, width = shape
    ratio = np.sqrt(1.0 - kept)
    box_h, box_w = np.rint(ratio * height).astype(int), np.rint(ratio * width).astype(int)
    top = (rng.random(len(kept)) * (height - box_h + 1)).astype(int)
    left = (rng.random(len(kept)) * (width - box_w + 1)).astype(int)
    rows, cols = np.arange(height)[None, :, None], np.arange(width)[None, None, :]
    return ((rows >= top[:, None, None]) & (rows < (top + box_h)[:, None, None])
            & (cols >= left[:, None, None]) & (cols < (left + box_w)[:, None, None]))
