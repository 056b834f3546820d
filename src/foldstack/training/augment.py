"""Augmentation: per image, albumentations pipelines from the YAML (their own serialisation),
and their device forms, the Keras preprocessing layers that do the same inside the compiled
training step; per training batch, MixUp and CutMix (:func:`mix_batch`).

The device forms are described here as plain data (:class:`DeviceStep`, no Keras), so the
pipeline's validation, in a process that never imports Keras, can tell a transform without one;
``training.device_augment`` builds the layers. MixUp and CutMix mix targets as well as images,
which a layer inside the network cannot see: the loader draws them and mixes the targets
(:class:`BatchMix`), and the pixels are mixed where the per-image transforms run, in the loader
(:func:`mix_batch`) or on the device (the batch carries the draws, :func:`device_mix_inputs`, to
``training.device_augment.DeviceMix``), the same draws and targets either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import albumentations as A
import numpy as np

from foldstack.core.config import AugmentConfig, CutMixConfig, MixUpConfig, ModelConfig


def compose(transforms: list[dict[str, Any]]) -> A.Compose:
    """An ``A.Compose`` of transforms written as ``A.to_dict`` writes them.

    Each item is ``{"__class_fullname__": "HorizontalFlip", "p": 0.5, ...}``; the list is wrapped
    in a Compose so a YAML file need not spell out the outer layer.
    """
    return A.from_dict({"transform": {"__class_fullname__": "Compose", "p": 1.0,
                                      "transforms": list(transforms)}})


# --- device forms --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceStep:
    """One albumentations transform as Keras layers, applied to each image with probability ``p``.

    Attributes:
        transform: the albumentations class name it stands for.
        layers: ``(keras.layers class name, keyword arguments)``, applied in order.
        p: the share of images the step transforms (the transform's own ``p``).
        rate: the share of images the layers themselves transform (Keras's ``RandomFlip`` flips
            half of them), so the step applies them to ``p / rate`` of the images.
    """

    transform: str
    layers: tuple[tuple[str, dict[str, Any]], ...]
    p: float
    rate: float = 1.0


#: How an image is filled where a geometric transform leaves it: black, as albumentations' Affine.
_FILL = {"fill_mode": "constant", "fill_value": 0.0, "interpolation": "bilinear"}


def _flip(mode: str) -> Callable[[A.BasicTransform], tuple]:
    def layers(t: A.BasicTransform) -> tuple:
        if t.p > 0.5:
            raise ValueError(f"p = {t.p:g}: Keras's RandomFlip flips half the images at most; use p <= 0.5")
        return (("RandomFlip", {"mode": mode}),)

    return layers


def _affine(t: A.BasicTransform) -> tuple:
    """Rotation, then zoom, then translation: three resamplings where albumentations makes one."""
    if any(t.shear[axis] != (0.0, 0.0) for axis in "xy"):
        raise ValueError("shear has no device form")
    if t.fit_output:
        raise ValueError("fit_output has no device form")
    if t.translate_px is not None and any(t.translate_px[axis] != (0, 0) for axis in "xy"):
        raise ValueError("translate_px has no device form; use translate_percent")
    layers = []
    if t.rotate != (0.0, 0.0):
        layers.append(("RandomRotation", {"factor": tuple(degrees / 360 for degrees in t.rotate), **_FILL}))
    scale = t.scale
    if any(scale[axis] != (1.0, 1.0) for axis in "xy"):
        # Keras zooms by 1 + factor in the sampling grid: an image scaled by s is a factor 1/s - 1.
        def zoom(axis: str) -> tuple[float, float]:
            low, high = scale[axis]
            return 1 / high - 1, 1 / low - 1

        width = None if t.keep_ratio else zoom("x")
        layers.append(("RandomZoom", {"height_factor": zoom("y"), "width_factor": width, **_FILL}))
    shift = t.translate_percent
    if shift is not None and any(shift[axis] != (0.0, 0.0) for axis in "xy"):
        layers.append(("RandomTranslation", {"height_factor": tuple(shift["y"]), "width_factor": tuple(shift["x"]),
                                             **_FILL}))
    return tuple(layers)


def _rotate(t: A.BasicTransform) -> tuple:
    return (("RandomRotation", {"factor": tuple(degrees / 360 for degrees in t.limit), **_FILL}),)


def _brightness_contrast(t: A.BasicTransform) -> tuple:
    """Brightness as albumentations adds it (a share of 255); contrast scaled about each image's
    mean (Keras) where albumentations scales about 0."""
    if not t.brightness_by_max:
        raise ValueError("brightness_by_max = false has no device form")
    low, high = t.contrast_limit
    return (("RandomBrightness", {"factor": tuple(t.brightness_limit), "value_range": (0, 255)}),
            ("RandomContrast", {"factor": (-low, high), "value_range": (0, 255)}))


def _random_crop(t: A.BasicTransform) -> tuple:
    if t.p < 1:
        raise ValueError(f"p = {t.p:g}: a crop of some images only leaves a batch of mixed sizes; use p = 1")
    return (("RandomCrop", {"height": t.height, "width": t.width}),)


def _resize(t: A.BasicTransform) -> tuple:
    return (("Resizing", {"height": t.height, "width": t.width, "interpolation": "bilinear"}),)


#: Each albumentations transform that has a device form, and how its parameters map to Keras's.
DEVICE_FORMS: dict[str, Callable[[A.BasicTransform], tuple]] = {
    "HorizontalFlip": _flip("horizontal"),
    "VerticalFlip": _flip("vertical"),
    "Affine": _affine,
    "Rotate": _rotate,
    "RandomBrightnessContrast": _brightness_contrast,
    "RandomCrop": _random_crop,
    "Resize": _resize,
}


#: Keras layers that keep the training step from compiling with XLA (``RandomCrop`` slices at
#: offsets drawn in the step, which ``jax.jit`` cannot): asked for, they run on the device
#: without XLA; ``auto`` leaves their pipelines on the CPU.
UNCOMPILED = frozenset({"RandomCrop"})


def device_steps(transforms: list[dict[str, Any]]) -> list[DeviceStep]:
    """The device form of each transform of a YAML list, in order.

    Albumentations builds each transform first, so its parameters arrive as albumentations
    normalises them (``rotate: 10`` is ``(-10, 10)``) and its defaults apply.

    Raises:
        ValueError: a transform has no device form, or a parameter none; one line naming it.
    """
    steps = []
    for position, transform in enumerate(compose(transforms).transforms):
        name = type(transform).__name__
        where = f"[{position}] {name}"
        if name not in DEVICE_FORMS:
            raise ValueError(f"{where} has no device form (those with one: {', '.join(DEVICE_FORMS)}); "
                             "augment it on the cpu")
        try:
            layers = DEVICE_FORMS[name](transform)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        if layers and transform.p > 0:
            rate = 0.5 if name in ("HorizontalFlip", "VerticalFlip") else 1.0
            steps.append(DeviceStep(name, layers, float(transform.p), rate))
    return steps


def check_device(transforms: list[dict[str, Any]]) -> None:
    """Raises ValueError, naming it, on a transform of ``transforms`` without a device form."""
    device_steps(transforms)


def augment_on_device(model: ModelConfig, augment: AugmentConfig, gpus: int) -> bool:
    """Whether ``model``'s train transforms run on the device: as its ``augment_on`` says, else
    as ``augment.on`` says; ``auto`` is the device where there is a GPU and every train transform
    has a device form that compiles (none in :data:`UNCOMPILED`). MixUp and CutMix go with them.
    Nothing to augment or mix is the CPU (a loader that only gathers either way)."""
    choice = model.augment_on or augment.on
    if not (augment.train or model.mixup or model.cutmix) or model.regime == "features":
        return False
    if choice == "auto":
        if gpus == 0:
            return False
        try:
            steps = device_steps(augment.train)
        except ValueError:
            return False
        return not any(layer in UNCOMPILED for step in steps for layer, _ in step.layers)
    return choice == "device"


# --- batch mixing -----------------------------------------------------------------------------------


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


class BatchMix:
    """MixUp or CutMix of whole training batches, as a model's YAML sets them.

    The loader hands it each training batch with a generator seeded by ``(seed, epoch, batch)``,
    so a run repeats exactly whatever order its threads build batches in; validation and TTA
    batches are never mixed. The draws and the targets are numpy's wherever the pixels are
    mixed: in the loader (:func:`mix_batch`), or on the device, where the batch becomes
    ``{"image": images as given, **device_mix_inputs(draw)}`` for the training network's
    ``DeviceMix`` layer; ``size`` then maps the batch's image size to the size the device's
    transforms make of it (:func:`augmented_size`), where CutMix's boxes are placed.
    """

    def __init__(self, mixup: MixUpConfig | None, cutmix: CutMixConfig | None, on_device: bool = False,
                 size: Callable[[tuple[int, int]], tuple[int, int]] | None = None):
        self.mixup = mixup
        self.cutmix = cutmix
        self.on_device = on_device
        self.size = size

    @classmethod
    def of(cls, model: ModelConfig, device: list[DeviceStep] | None = None) -> BatchMix | None:
        """The model's batch mixing, or None when it mixes nothing; ``device``: the pixels are
        mixed on the device, after these steps (the train transforms' device forms)."""
        if not (model.mixup or model.cutmix):
            return None
        if device is None:
            return cls(model.mixup, model.cutmix)
        return cls(model.mixup, model.cutmix, on_device=True, size=lambda size: augmented_size(device, size))

    def __call__(self, images: np.ndarray, targets: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray | dict[str, np.ndarray], np.ndarray]:
        if not self.on_device:
            return mix_batch(images, targets, self.mixup, self.cutmix, rng)
        size = tuple(images.shape[1:3])
        draw = draw_mix(len(images), self.size(size) if self.size else size, self.mixup, self.cutmix, rng)
        return {"image": images, **device_mix_inputs(draw, len(images))}, mix_targets(targets, draw)


def mix_batch(images: np.ndarray, targets: np.ndarray, mixup: MixUpConfig | None, cutmix: CutMixConfig | None,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A batch's images and targets, mixed by MixUp (probability ``mixup.p``), else by CutMix
    (``cutmix.p``), else untouched: one draw per batch picks at most one of them
    (:func:`draw_mix`). Mixed images are float32 in the images' range (0-255), which the
    network's input takes as it takes uint8."""
    draw = draw_mix(len(images), images.shape[1:3], mixup, cutmix, rng)
    if draw is None:
        return images, targets
    return mix_images(images, draw), mix_targets(targets, draw)


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


def mix_images(images: np.ndarray, draw: MixDraw) -> np.ndarray:
    """``images`` mixed as ``draw`` says, by Keras's ``MixUp`` or ``CutMix`` layer
    (``transform_images``), as float32: the loader's side of :func:`mix_batch`."""
    import keras

    transformation = {"permutation_order": draw.permutation}
    if draw.boxes is None:
        layer = keras.layers.MixUp()
        transformation["mix_weight"] = draw.weight
    else:
        layer = keras.layers.CutMix()
        transformation["batch_masks"] = box_masks(images.shape, draw.boxes)
    return keras.ops.convert_to_numpy(layer.transform_images(images, transformation)).astype(np.float32)


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


def augmented_size(steps: list[DeviceStep], size: tuple[int, int]) -> tuple[int, int]:
    """The size ``steps`` make of images of ``size``: a crop's or a resize's, else the same."""
    for step in steps:
        for layer, arguments in step.layers:
            if layer in ("RandomCrop", "Resizing"):
                size = (arguments["height"], arguments["width"])
    return size


def _boxes(shape: tuple[int, int], kept: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One ``(top, left, height, width)`` box per kept share: ``sqrt(1 - kept)`` of each side, in
    pixels, placed at random wholly inside the image."""
    height, width = shape
    ratio = np.sqrt(1.0 - kept)
    box_h, box_w = np.rint(ratio * height).astype(int), np.rint(ratio * width).astype(int)
    top = (rng.random(len(kept)) * (height - box_h + 1)).astype(int)
    left = (rng.random(len(kept)) * (width - box_w + 1)).astype(int)
    return np.stack([top, left, box_h, box_w], axis=1)


def box_masks(shape, boxes):
    """``(n, height, width, 1)`` booleans for images of ``shape`` ``(n, height, width, ...)``, true
    inside each image's ``(top, left, height, width)`` box; ``keras.ops``, so the loader (numpy
    boxes) and ``training.device_augment.DeviceMix`` (the batch's tensors) build the same masks."""
    import keras

    boxes = keras.ops.convert_to_tensor(boxes, "int32")
    rows = keras.ops.arange(shape[1], dtype="int32")[None, :, None]
    cols = keras.ops.arange(shape[2], dtype="int32")[None, None, :]
    top, left, height, width = (boxes[:, i, None, None] for i in range(4))
    inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
    return inside[..., None]
