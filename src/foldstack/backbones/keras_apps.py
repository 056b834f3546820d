"""keras.applications backbones. Keras is imported only when a model is built.

Each family's preprocessing is the one its ``keras.applications.<family>.preprocess_input`` applies
(keras/src/applications/*.py, Keras 3.15): "caffe" for VGG and ResNet v1, "tf" ([-1, 1]) for
ResNetV2, Inception, Xception and MobileNetV2, "torch" for DenseNet. EfficientNet, EfficientNetV2,
ConvNeXt and MobileNetV3 rescale inside the model (their ``preprocess_input`` is the identity), so
they take 0-255 as they are.
"""

from __future__ import annotations

from typing import Any, Callable

from foldstack.backbones.spec import BackboneSpec, register

Builder = Callable[..., Any]

_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


def _app(constructor: str, include_top: bool) -> Builder:
    """A ``build(input_shape, weights)`` for ``keras.applications.<constructor>``."""

    def build(input_shape: tuple[int, int, int], weights: str | None):
        import keras

        return getattr(keras.applications, constructor)(
            weights=weights, input_shape=input_shape, include_top=include_top)

    return build


def _tf(x):
    return x / 127.5 - 1.0


def _caffe(x):
    from keras import ops

    # The caffe weights were trained on BGR images with the ImageNet mean subtracted, unscaled.
    return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_BGR_MEAN, dtype=x.dtype)


def _torch(x):
    from keras import ops

    mean = ops.convert_to_tensor(_TORCH_MEAN, dtype=x.dtype)
    std = ops.convert_to_tensor(_TORCH_STD, dtype=x.dtype)
    return (x / 255.0 - mean) / std


def _identity(x):
    return x


# (name, family, keras.applications constructor, preprocessing, default size, min size, cut layers)
_APPS: tuple[tuple[str, str, str, Callable[[Any], Any], int, int, tuple[str, ...]], ...] = (
    ("vgg16", "VGG", "VGG16", _caffe, 224, 32, ("block3_pool", "block4_pool")),
    ("vgg19", "VGG", "VGG19", _caffe, 224, 32, ("block3_pool", "block4_pool")),
    ("resnet50", "ResNet", "ResNet50", _caffe, 224, 32, ("conv3_block4_out", "conv4_block6_out")),
    ("resnet101", "ResNet", "ResNet101", _caffe, 224, 32, ("conv3_block4_out", "conv4_block23_out")),
    ("resnet152", "ResNet", "ResNet152", _caffe, 224, 32, ("conv3_block8_out", "conv4_block36_out")),
    ("resnet50_v2", "ResNetV2", "ResNet50V2", _tf, 224, 32, ("conv3_block4_out", "conv4_block6_out")),
    ("resnet101_v2", "ResNetV2", "ResNet101V2", _tf, 224, 32, ("conv3_block4_out", "conv4_block23_out")),
    ("resnet152_v2", "ResNetV2", "ResNet152V2", _tf, 224, 32, ("conv3_block8_out", "conv4_block36_out")),
    ("inception_v3", "Inception", "InceptionV3", _tf, 299, 75, ("mixed5", "mixed8")),
    ("inception_resnet_v2", "Inception", "InceptionResNetV2", _tf, 299, 75, ("mixed_6a", "mixed_7a")),
    ("xception", "Xception", "Xception", _tf, 299, 71, ("block4_pool", "block13_pool")),
    ("densenet121", "DenseNet", "DenseNet121", _torch, 224, 32, ("pool3_pool", "pool4_pool")),
    ("densenet169", "DenseNet", "DenseNet169", _torch, 224, 32, ("pool3_pool", "pool4_pool")),
    ("densenet201", "DenseNet", "DenseNet201", _torch, 224, 32, ("pool3_pool", "pool4_pool")),
    ("mobilenet_v2", "MobileNetV2", "MobileNetV2", _tf, 224, 32, ("block_6_expand_relu", "block_13_expand_relu")),
    ("mobilenet_v3_small", "MobileNetV3", "MobileNetV3Small", _identity, 224, 32,
     ("expanded_conv_2_add", "expanded_conv_7_add")),
    ("mobilenet_v3_large", "MobileNetV3", "MobileNetV3Large", _identity, 224, 32,
     ("expanded_conv_5_add", "expanded_conv_11_add")),
    *((f"efficientnet_b{i}", "EfficientNet", f"EfficientNetB{i}", _identity, size, 32,
       ("block4a_expand_activation", "block6a_expand_activation"))
      for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600))),
    *((f"efficientnet_v2_{v.lower()}", "EfficientNetV2", f"EfficientNetV2{v}", _identity, size, 32,
       ("block4a_expand_activation", "block6a_expand_activation"))
      for v, size in (("B0", 224), ("B1", 240), ("B2", 260), ("B3", 300), ("S", 384), ("M", 480), ("L", 480))),
    # ConvNeXt prefixes its layer names with the model's name, which is the registry name.
    *((f"convnext_{v}", "ConvNeXt", f"ConvNeXt{cls}", _identity, 224, 32,
       (f"convnext_{v}_downsampling_block_1", f"convnext_{v}_downsampling_block_2"))
      for v, cls in (("tiny", "Tiny"), ("small", "Small"), ("base", "Base"), ("large", "Large"), ("xlarge", "XLarge"))),
)

#: How each family's layer names say their block (``BackboneSpec.block_pattern``): a residual
#: unit, an inception module, a dense block, a ConvNeXt block.
_BLOCKS = {
    "VGG": r"^block\d+", "ResNet": r"^conv\d+_block\d+", "ResNetV2": r"^conv\d+_block\d+",
    "Inception": r"^(?:mixed_?\w+?|block\d+_\d+)(?:$|_)", "Xception": r"^block\d+",
    "DenseNet": r"^(conv\d+_block\d+|pool\d+)", "MobileNetV2": r"^block_\d+",
    "MobileNetV3": r"^expanded_conv(?:_\d+)?", "EfficientNet": r"^block\d+[a-z]",
    "EfficientNetV2": r"^block\d+[a-z]", "ConvNeXt": r"stage_\d+_block_\d+|downsampling_block_\d+",
}


def _register_all() -> None:
    for name, family, constructor, preprocess, default_size, min_size, cut_layers in _APPS:
        register(BackboneSpec(
            name=name, family=family,
            build=_app(constructor, include_top=False),
            build_classifier=_app(constructor, include_top=True),
            preprocess=preprocess, default_size=default_size, min_size=min_size, cut_layers=cut_layers,
            block_pattern=_BLOCKS[family],
        ))


_register_all()
