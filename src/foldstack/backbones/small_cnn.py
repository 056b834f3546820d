"""A small VGG-style CNN trained from scratch: for tiny images (digits, icons) and fast tests.

It has no pretrained weights; ``weights`` must be ``none`` or a path to a weights file.
"""

from __future__ import annotations

from foldstack.backbones.spec import BackboneSpec, register


def build(input_shape, weights, widths=(32, 64, 128)):
    import keras

    if weights == "imagenet":
        raise ValueError("small_cnn has no ImageNet weights; use weights: none (or a weights file)")
    inputs = keras.Input(input_shape)
    x = inputs
    for block, width in enumerate(widths, start=1):
        for conv in (1, 2):
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{block}_conv{conv}")(x)
            # momentum 0.9: trained from scratch in few steps, the default 0.99 lags far behind
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"block{block}_bn{conv}")(x)
            x = keras.layers.Activation("relu", name=f"block{block}_relu{conv}")(x)
        if block < len(widths):
            x = keras.layers.MaxPooling2D(name=f"block{block}_pool")(x)
    model = keras.Model(inputs, x, name="small_cnn")
    if weights:
        model.load_weights(weights)
    return model


def _scale(x):
    return x / 255.0


register(BackboneSpec(name="small_cnn", family="SmallCNN", build=build, preprocess=_scale,
                      default_size=32, min_size=8, cut_layers=("block1_pool", "block2_pool"),
                      block_pattern=r"^block\d+"))
