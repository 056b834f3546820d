"""The backbone registry and its factory.

A backbone family registers a :class:`BackboneSpec` per backbone when its module is imported
(``foldstack.backbones`` imports them all). :func:`create` returns a Keras model that
takes raw RGB images (floats in 0-255, NHWC) and applies the backbone's own preprocessing inside
the model, so training code never needs to know which backbone it holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from foldstack.core.registry import Registry, UnknownNameError

UnknownBackboneError = UnknownNameError


@dataclass(frozen=True)
class BackboneSpec:
    """What the registry knows about one backbone.

    Attributes:
        name: registry name, as a pipeline YAML writes it.
        build: ``build(input_shape, weights) -> keras.Model`` without the classifier top, ending
            in the last feature map; it takes the backbone's *own* input scaling.
        preprocess: maps raw RGB floats 0-255 to what ``build``'s model expects (Keras ops).
        default_size: the input size the backbone was trained at.
        min_size: the smallest input the architecture accepts.
        cut_layers: layer names where a ``partial`` fine-tune may cut, shallow to deep.
        build_classifier: optional ``build_classifier(input_shape, weights) -> keras.Model``
            with the 1,000-class ImageNet top, for checking weights.
        cut: optional ``cut(model, layer) -> keras.Model``, ``build``'s model ended at ``layer``
            (default: that layer's output as it is).
        block_groups: optional ``block_groups(model) -> [(name, layers)]``, how ``build``'s model
            groups into named blocks, shallow to deep, for a family whose blocks are nested
            models or layers (KerasHub's): the blocks of layer-wise learning-rate decay, named by
            ``unfreeze``/``cut_layer``.
        block_pattern: where :attr:`block_groups` is None, a regex whose first match in a layer's
            name (its group 1 if it has one) names the block the layer starts or belongs to
            (:meth:`blocks`; layer-wise learning-rate decay).
        drop_path: the backbone's own stochastic-depth rate where ``build`` takes a
            ``drop_path=`` rate; None where it has none.
    """

    name: str
    build: Callable[..., Any]
    preprocess: Callable[[Any], Any]
    default_size: int
    min_size: int = 32
    cut_layers: tuple[str, ...] = ()
    build_classifier: Callable[..., Any] | None = None
    cut: Callable[[Any, str], Any] | None = None
    block_groups: Callable[[Any], list[tuple[str, list[Any]]]] | None = None
    family: str = field(default="", compare=False)
    block_pattern: str = r"block_?\d+"
    drop_path: float | None = None

    def blocks(self, layer_names: Sequence[str]) -> list[int]:
        """The block of each layer, in order, from 0 (the stem): a layer whose name carries a
        new block name (:attr:`block_pattern`) starts the next block, any other stays in the
        current one. Depth, not architecture: layer decay only needs it to grow monotonically."""
        pattern = re.compile(self.block_pattern)
        out, current, block = [], None, 0
        for name in layer_names:
            found = pattern.search(name)
            key = None if found is None else (found.group(1) if pattern.groups else found.group(0))
            if key is not None and key != current:
                current, block = key, block + (current is not None or bool(out))
            out.append(block)
        return out


_REGISTRY: Registry[BackboneSpec] = Registry("backbone")
register = _REGISTRY.register
names = _REGISTRY.names
#: Families whose names carry what they load (``hub:<preset>``): prefix -> ``resolve(name) -> spec``.
_PREFIXES: dict[str, Callable[[str], BackboneSpec]] = {}


def register_prefix(prefix: str, resolve: Callable[[str], BackboneSpec]) -> None:
    """Names starting with ``prefix`` are resolved by ``resolve`` (it raises on a bad one)."""
    if prefix in _PREFIXES:
        raise ValueError(f"backbone prefix {prefix!r} is registered twice")
    _PREFIXES[prefix] = resolve


def prefixes() -> list[str]:
    return sorted(_PREFIXES)


def get(name: str) -> BackboneSpec:
    """The spec of a registered backbone, or of a prefixed name (``hub:<preset>``)."""
    for prefix, resolve in _PREFIXES.items():
        if name.startswith(prefix):
            return resolve(name)
    return _REGISTRY.get(name)


def create(name: str, weights: str | None = "imagenet", include_top: bool = False,
           input_shape: tuple[int, int, int] | None = None, cut_at: str | None = None,
           drop_path: float | None = None, to_rgb: Sequence[int | str] | None = None):
    """A Keras model for backbone ``name`` that takes raw floats 0-255 (NHWC): RGB, or the
    channels of array images (``input_shape[-1]``).

    The model is ``rgb_0_255`` input -> (``to_rgb``) -> the backbone's preprocessing (Keras ops)
    -> the backbone, a nested model that is ``model.layers[-1]`` (freeze that one to freeze the
    backbone). Other than 3 channels without ``to_rgb``: the backbone's first convolution takes
    them, its ImageNet filters adapted (:func:`adapt_input_kernel`), and each channel is
    preprocessed as a grey image would be.

    Args:
        name: a registered backbone.
        weights: ``"imagenet"``, ``"none"``/``None`` (random), or a path to a weights file saved
            from the nested backbone (``model.layers[-1].save_weights(...)``, at these channels).
        include_top: with the ImageNet classifier (1,000 probabilities) instead of the feature map.
        input_shape: ``(height, width, channels)``; defaults to the backbone's own size, RGB.
        cut_at: end the backbone at this layer's output (``cut_layer``: ``partial`` and any regime that names one).
        drop_path: a stochastic-depth rate over the backbone's own (:attr:`BackboneSpec.drop_path`).
        to_rgb: the backbone's R, G and B, each a channel's index or ``"mean"`` (of all channels).
    """
    import keras

    spec = get(name)
    input_shape = input_shape or (spec.default_size, spec.default_size, 3)
    weights = None if weights in (None, "none") else weights

    def build(shape, weights):
        if include_top:
            if spec.build_classifier is None:
                raise ValueError(f"backbone {name!r} has no ImageNet classifier registered")
            return spec.build_classifier(shape, weights)
        if drop_path is not None:
            if spec.drop_path is None:
                raise ValueError(f"backbone {name!r} has no stochastic depth (drop_path)")
            return spec.build(shape, weights, drop_path=drop_path)
        return spec.build(shape, weights)

    channels = 3 if to_rgb is not None else input_shape[-1]
    if channels != 3 and weights == "imagenet":
        inner = adapt_input_channels(build((*input_shape[:2], 3), weights), build((*input_shape[:2], channels), None))
    else:
        inner = build((*input_shape[:2], channels), weights)
    if cut_at is not None:
        try:
            inner = (spec.cut(inner, cut_at) if spec.cut else
                     keras.Model(inner.input, inner.get_layer(cut_at).output, name=f"{name}_to_{cut_at}"))
        except ValueError:
            raise ValueError(f"backbone {name!r} has no layer {cut_at!r} to cut at; "
                             f"suggested: {', '.join(spec.cut_layers)}") from None
    inputs = keras.Input(input_shape, name="rgb_0_255")
    x = inputs if to_rgb is None else channels_to_rgb(inputs, to_rgb)
    outputs = inner(spec.preprocess(x) if channels == 3 else _each_channel(spec.preprocess, x))
    # A prefixed name holds a path (hub:/kaggle/input/...); Keras refuses "/" in a model's name.
    return keras.Model(inputs, outputs, name=re.sub(r"[^\w.-]+", "_", f"{name}_raw_rgb"))


def channels_to_rgb(x, rule: Sequence[int | str]):
    """Array images' channels as RGB by a declared rule: each of R, G, B a channel's index or
    ``"mean"``, the mean of all channels (Keras ops)."""
    from keras import ops

    picked = [ops.mean(x, axis=-1, keepdims=True) if c == "mean" else x[..., int(c):int(c) + 1] for c in rule]
    return ops.concatenate(picked, axis=-1)


def _each_channel(preprocess: Callable[[Any], Any], x):
    """A backbone's RGB preprocessing applied to each channel as to a grey image (the channel in
    R, G and B; the three results' mean): exactly the RGB preprocessing where it treats the three
    alike, its mean where it has a mean and scale per colour."""
    from keras import ops

    grey = [ops.mean(preprocess(ops.repeat(x[..., c:c + 1], 3, axis=-1)), axis=-1, keepdims=True)
            for c in range(x.shape[-1])]
    return ops.concatenate(grey, axis=-1)


def adapt_input_kernel(kernel, channels: int):
    """An RGB first convolution's kernel ``(kh, kw, 3, out)`` for ``channels`` input channels:
    the filters averaged over R, G and B, repeated per channel and scaled by ``3 / channels``
    (timm's ``adapt_input_conv`` rule), so an image whose channels are all equal gives the
    activations of the grey RGB image with those values."""
    import numpy as np

    kernel = np.asarray(kernel)
    return np.repeat(kernel.mean(axis=-2, keepdims=True), channels, axis=-2) * (3.0 / channels)


def adapt_input_channels(rgb, other):
    """``other`` (the same architecture as ``rgb`` at another channel count) given ``rgb``'s
    weights: every one as it is, but the first convolution's kernel, adapted
    (:func:`adapt_input_kernel`). Raises ValueError where the two differ otherwise."""
    adapted, weights = False, []
    for mine, theirs in zip(rgb.get_weights(), other.get_weights()):
        if mine.shape == theirs.shape:
            weights.append(mine)
        elif (not adapted and mine.ndim == 4 and mine.shape[2] == 3
              and mine.shape[:2] + mine.shape[3:] == theirs.shape[:2] + theirs.shape[3:]):
            weights.append(adapt_input_kernel(mine, theirs.shape[2]))
            adapted = True
        else:
            raise ValueError(f"backbone {rgb.name!r}: cannot adapt its weights of shape {mine.shape} to {theirs.shape}; "
                             "map the channels to RGB instead (to_rgb)")
    other.set_weights(weights)
    return other


def describe() -> Iterator[dict[str, Any]]:
    """One row per registered backbone for ``foldstack backbones``.

    Each row has ``name``, ``family``, ``parameters`` (without the ImageNet top) and
    ``default_size``. Counting parameters means building each model (at its smallest size, random
    weights), a few minutes for the whole registry on a CPU, so rows are yielded as they are ready.
    """
    import keras

    for name in names():
        spec = get(name)
        model = spec.build((spec.min_size, spec.min_size, 3), None)
        yield {"name": name, "family": spec.family, "parameters": model.count_params(),
               "default_size": spec.default_size}
        keras.backend.clear_session()  # the big ones (ConvNeXtXLarge) would pile up in memory
