"""keras.applications backbones. Keras is imported only when a model is built."""

from __future__ import annotations

from foldstack.backbones.registry import BackboneSpec, register


def _app(module: str, cls: str):
    def build(input_shape, weights, include_top=False):
        import keras

        constructor = getattr(getattr(keras.applications, module), cls)
        kwargs = {} if include_top else {"include_top": False}
        return constructor(weights=weights, input_shape=input_shape, **kwargs)

    return build


def _rescale_to(low: float, high: float):
    def preprocess(x):
        return x * ((high - low) / 255.0) + low

    return preprocess


def _identity(x):
    return x


register(BackboneSpec(
    name="mobilenet_v2", family="MobileNetV2",
    build=_app("mobilenet_v2", "MobileNetV2"),
    build_classifier=lambda shape, weights: _app("mobilenet_v2", "MobileNetV2")(shape, weights, include_top=True),
    preprocess=_rescale_to(-1.0, 1.0), default_size=224, min_size=32,
    cut_layers=("block_6_expand_relu", "block_13_expand_relu"),
))
register(BackboneSpec(
    name="efficientnet_b0", family="EfficientNet",
    build=_app("efficientnet", "EfficientNetB0"),
    build_classifier=lambda shape, weights: _app("efficientnet", "EfficientNetB0")(shape, weights, include_top=True),
    preprocess=_identity, default_size=224, min_size=32,
    cut_layers=("block4a_expand_activation", "block6a_expand_activation"),
))
