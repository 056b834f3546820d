"""MixUp and CutMix of a training batch: the draws, and the targets mixed by them.

MixUp and CutMix mix targets as well as images, which a layer inside the network cannot see: the
loader draws them and mixes the targets (:class:`BatchMix`), and the pixels are mixed where the
per-image transforms run, in the loader or on the device (the batch carries the draws,
:func:`device_mix_inputs`), by the same Keras code either way
(``training.device_augment.DeviceMix``). Keras-free: numpy's draws and targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from foldstack.core.config import CutMixConfig, MixUpConfig, ModelConfig
from foldstack.training.device_forms import DeviceStep, augmented_size


@dataclass(frozen=True)
class MixDraw:
    """One training batch's MixUp or CutMix, as drawn (:func:`draw_mix`): image ``i`` is mixed
    with image ``permutation[i]`` of the same batch, and its target becomes
    ``weight[i] * y[i] + (1 - weight[i]) * y[permutation[i]]``.

    Attributes:
        permutation: ``(n,)`` each image's partner.
        weight: ``(n,)`` float32, each image's share of its own target: MixUp's Beta draw, which
            blends the pixels too; CutMix's share of pixels outside the box.
        boxes: CutMix's ``(n, 4)`` int boxes, ``(top, left, height, width)`` in pixels, where the
            partner's pixels replace the image's; None for MixUp.
    """

    permutation: np.ndarray
    weight: np.ndarray
    boxes: np.ndarray | None = None


#: A batch's mixing parameters beside its ``image`` when the device mixes it, each name's shape
#: per image and dtype (:func:`device_mix_inputs`, ``training.device_augment.DeviceMix``).
MIX_INPUTS = {"mix_permutation": ((), "int32"), "mix_weight": ((), "float32"), "mix_box": ((4,), "int32")}


Pixels = Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray]
"""``pixels(images, mix) -> mixed``: a batch's pixels mixed as its :func:`device_mix_inputs` say,
float32 in the images' range (0-255), in the loader (``training.device_augment.loader_pixels``)."""


class BatchMix:
    """MixUp or CutMix of whole training batches, as a model's YAML sets them.

    The loader hands it each training batch with a generator seeded by ``(seed, epoch, batch)``,
    so a run repeats exactly whatever order its threads build batches in; validation and TTA
    batches are never mixed. The draws and the targets are numpy's wherever the pixels are
    mixed: in the loader by ``pixels``, or (``pixels`` None) on the device, where the batch
    becomes ``{"image": images as given, **device_mix_inputs(draw)}`` for the training network's
    ``DeviceMix`` layer; ``size`` then maps the batch's image size to the size the device's
    transforms make of it (``device_forms.augmented_size``), where CutMix's boxes are placed.
    A batch that draws neither comes back as it was given.
    """

    def __init__(self, mixup: MixUpConfig | None, cutmix: CutMixConfig | None, pixels: Pixels | None = None,
                 size: Callable[[tuple[int, int]], tuple[int, int]] | None = None):
        self.mixup = mixup
        self.cutmix = cutmix
        self.pixels = pixels
        self.size = size

    @classmethod
    def of(cls, model: ModelConfig, pixels: Pixels | None = None,
           device: list[DeviceStep] | None = None) -> BatchMix | None:
        """The model's batch mixing, or None when it mixes nothing (:func:`mixes`): its pixels
        mixed in the loader by ``pixels``, or on the device after ``device``'s steps (the train
        transforms' device forms)."""
        if not mixes(model):
            return None
        if pixels is not None:
            return cls(model.mixup, model.cutmix, pixels)
        return cls(model.mixup, model.cutmix, size=lambda size: augmented_size(device or [], size))

    @property
    def on_device(self) -> bool:
        return self.pixels is None

    def __call__(self, images: np.ndarray, targets: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray | dict[str, np.ndarray], np.ndarray]:
        size = tuple(images.shape[1:3])
        draw = draw_mix(len(images), self.size(size) if self.size else size, self.mixup, self.cutmix, rng)
        mix = device_mix_inputs(draw, len(images))
        if self.on_device:
            return {"image": images, **mix}, mix_targets(targets, draw)
        if draw is None:
            return images, targets
        return self.pixels(images, mix), mix_targets(targets, draw)


def mixes(model: ModelConfig) -> bool:
    """Whether ``model`` mixes its training batches (MixUp or CutMix)."""
    return bool(model.mixup or model.cutmix)


def draw_mix(n: int, shape: tuple[int, int], mixup: MixUpConfig | None, cutmix: CutMixConfig | None,
             rng: np.random.Generator) -> MixDraw | None:
    """A batch of ``n`` images of ``shape``'s mixing: MixUp with probability ``mixup.p``, else
    CutMix with ``cutmix.p``, else None (untouched).

    MixUp blends the pixels with ``w ~ Beta(alpha, alpha)``; CutMix pastes a box of the partner
    whose side is ``sqrt(1 - w)`` of the image's, and ``w`` is then the share of pixels it did
    not cover (exact on the pixel grid, so small boxes are counted right). The draws are
    numpy's, not Keras's ``MixUp`` and ``CutMix`` layers' own: with an integer seed CutMix places
    a box's x and y from the same random number.
    """
    choice = rng.random()
    if mixup is not None and choice < mixup.p:
        weight, boxes = rng.beta(mixup.alpha, mixup.alpha, n).astype(np.float32), None
    elif cutmix is not None and choice < (mixup.p if mixup else 0.0) + cutmix.p:
        boxes = _boxes(shape, rng.beta(cutmix.alpha, cutmix.alpha, n), rng)
        weight = 1.0 - (boxes[:, 2] * boxes[:, 3] / (shape[0] * shape[1])).astype(np.float32)
    else:
        return None
    return MixDraw(rng.permutation(n), weight, boxes)


def mix_targets(targets: np.ndarray, draw: MixDraw | None) -> np.ndarray:
    """``targets`` mixed as ``draw`` says, float32 (the sum of Keras's ``MixUp`` and ``CutMix``
    ``transform_labels``, in numpy: a Keras layer made per batch costs the loader milliseconds);
    as they are when ``draw`` is None."""
    if draw is None:
        return targets
    targets, weight = targets.astype(np.float32), draw.weight[:, None]
    return weight * targets + (1.0 - weight) * targets[draw.permutation]


def device_mix_inputs(draw: MixDraw | None, n: int) -> dict[str, np.ndarray]:
    """What a batch of ``n`` carries for the device to mix its pixels as ``draw`` says
    (:data:`MIX_INPUTS`): each image's partner, its pixels' weight (MixUp's; 1 for CutMix) and
    its box (CutMix's; empty for MixUp). A batch that draws neither carries the identity: each
    image its own partner, at weight 1, with no box, so every batch has the same structure and
    the compiled step never branches."""
    permutation, weight = np.arange(n), np.ones(n, np.float32)
    boxes = np.zeros((n, 4), np.int32)
    if draw is not None:
        permutation = draw.permutation
        if draw.boxes is None:
            weight = draw.weight
        else:
            boxes = draw.boxes
    return {name: array.astype(dtype)
            for (name, (_, dtype)), array in zip(MIX_INPUTS.items(), (permutation, weight, boxes))}


def _boxes(shape: tuple[int, int], kept: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One ``(top, left, height, width)`` box per kept share: ``sqrt(1 - kept)`` of each side, in
    pixels, placed at random wholly inside the image."""
    height, width = shape
    ratio = np.sqrt(1.0 - kept)
    box_h, box_w = np.rint(ratio * height).astype(int), np.rint(ratio * width).astype(int)
    top = (rng.random(len(kept)) * (height - box_h + 1)).astype(int)
    left = (rng.random(len(kept)) * (width - box_w + 1)).astype(int)
    return np.stack([top, left, box_h, box_w], axis=1)
