"""The train transforms' device forms as plain data, and where the train transforms run.

Each albumentations transform that has one is described as the Keras preprocessing layers that
do the same inside the compiled training step (:class:`DeviceStep`: layer names and their
arguments, no Keras), so the pipeline's validation, in a process that never imports Keras, can
tell a transform without one; ``training.device_augment`` builds the layers. ``augment.on`` (or a
model's ``augment_on``) says where the transforms run: :func:`augment_on_device`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import albumentations as A
import cv2
import numpy as np

from foldstack.core.config import AugmentConfig, ModelConfig
from foldstack.training.augment import compose


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


#: cv2's border modes that Keras's geometric layers have, as their ``fill_mode``: the edge pixel
#: repeated (Keras's ``nearest``) and reflected with it (``reflect``, cv2's ``BORDER_REFLECT``).
#: Keras has no ``BORDER_REFLECT_101`` (the edge pixel not repeated), and its ``wrap`` is not
#: cv2's under TensorFlow (a rotation wraps off by a pixel).
_FILL_MODES = {cv2.BORDER_CONSTANT: "constant", cv2.BORDER_REPLICATE: "nearest", cv2.BORDER_REFLECT: "reflect"}
_BORDERS = {cv2.BORDER_CONSTANT: "BORDER_CONSTANT", cv2.BORDER_REPLICATE: "BORDER_REPLICATE",
            cv2.BORDER_REFLECT: "BORDER_REFLECT", cv2.BORDER_WRAP: "BORDER_WRAP",
            cv2.BORDER_REFLECT_101: "BORDER_REFLECT_101"}
#: cv2's interpolations that Keras's geometric layers (rotation, zoom, translation) sample with.
_SAMPLING = {cv2.INTER_NEAREST: "nearest", cv2.INTER_LINEAR: "bilinear"}
#: cv2's interpolations that Keras's ``Resizing`` has: its ``nearest`` samples pixel centres, as
#: ``INTER_NEAREST_EXACT`` does (``INTER_NEAREST`` does not); its ``bicubic`` and ``lanczos3`` are
#: other kernels than cv2's, and its ``area`` is TensorFlow's alone.
_RESIZING = {cv2.INTER_NEAREST_EXACT: "nearest", cv2.INTER_LINEAR: "bilinear"}
_INTERPOLATIONS = {cv2.INTER_NEAREST: "INTER_NEAREST", cv2.INTER_LINEAR: "INTER_LINEAR",
                   cv2.INTER_CUBIC: "INTER_CUBIC", cv2.INTER_AREA: "INTER_AREA",
                   cv2.INTER_LANCZOS4: "INTER_LANCZOS4", cv2.INTER_LINEAR_EXACT: "INTER_LINEAR_EXACT",
                   cv2.INTER_NEAREST_EXACT: "INTER_NEAREST_EXACT"}


def _keras_mode(key: str, value: int, modes: dict[int, str], names: dict[int, str]) -> str:
    """Keras's name for cv2's mode ``value`` of ``key``; a ValueError naming both where Keras has none."""
    if value not in modes:
        has = ", ".join(f"{mode} (cv2.{names[mode]})" for mode in modes)
        raise ValueError(f"{key} = {value} (cv2.{names.get(value, '?')}) has no device form; those with one: {has}")
    return modes[value]


def _geometry(t: A.BasicTransform) -> dict[str, Any]:
    """How a geometric layer fills and samples as transform ``t`` does: its border (and, constant,
    its fill) and its interpolation."""
    fill_mode = _keras_mode("border_mode", t.border_mode, _FILL_MODES, _BORDERS)
    fill = np.unique(np.asarray(t.fill, dtype=np.float32))
    if fill_mode == "constant" and len(fill) > 1:
        raise ValueError(f"fill = {t.fill}: Keras fills every channel alike; use one number")
    return {"fill_mode": fill_mode, "fill_value": float(fill[0]) if fill_mode == "constant" else 0.0,
            "interpolation": _keras_mode("interpolation", t.interpolation, _SAMPLING, _INTERPOLATIONS)}


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
    if t.balanced_scale:
        raise ValueError("balanced_scale has no device form")
    geometry, layers = _geometry(t), []
    if t.rotate != (0.0, 0.0):
        layers.append(("RandomRotation", {"factor": tuple(degrees / 360 for degrees in t.rotate), **geometry}))
    scale = t.scale
    if any(scale[axis] != (1.0, 1.0) for axis in "xy"):
        # Keras zooms by 1 + factor in the sampling grid: an image scaled by s is a factor 1/s - 1.
        def zoom(axis: str) -> tuple[float, float]:
            low, high = scale[axis]
            return 1 / high - 1, 1 / low - 1

        width = None if t.keep_ratio else zoom("x")
        layers.append(("RandomZoom", {"height_factor": zoom("y"), "width_factor": width, **geometry}))
    shift = t.translate_percent
    if shift is not None and any(shift[axis] != (0.0, 0.0) for axis in "xy"):
        layers.append(("RandomTranslation", {"height_factor": tuple(shift["y"]), "width_factor": tuple(shift["x"]),
                                             **geometry}))
    return tuple(layers)


def _rotate(t: A.BasicTransform) -> tuple:
    if t.crop_border:
        raise ValueError("crop_border has no device form")
    return (("RandomRotation", {"factor": tuple(degrees / 360 for degrees in t.limit), **_geometry(t)}),)


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
    if t.pad_if_needed:
        raise ValueError("pad_if_needed has no device form")
    return (("RandomCrop", {"height": t.height, "width": t.width}),)


def _resize(t: A.BasicTransform) -> tuple:
    if t.area_for_downscale is not None:
        raise ValueError("area_for_downscale has no device form")
    interpolation = _keras_mode("interpolation", t.interpolation, _RESIZING, _INTERPOLATIONS)
    return (("Resizing", {"height": t.height, "width": t.width, "interpolation": interpolation}),)


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


def augmented_size(steps: list[DeviceStep], size: tuple[int, int]) -> tuple[int, int]:
    """The size ``steps`` make of images of ``size``: a crop's or a resize's, else the same."""
    for step in steps:
        for layer, arguments in step.layers:
            if layer in ("RandomCrop", "Resizing"):
                size = (arguments["height"], arguments["width"])
    return size
