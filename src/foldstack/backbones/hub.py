"""KerasHub presets as a backbone family: ``backbone: hub:<preset>``.

``<preset>`` is a preset folder on disk (one ``save_to_preset`` wrote, or a Kaggle Model attached
to a kernel: ``/kaggle/input/models/<owner>/<model>/keras/<variation>/<version>``), or a KerasHub
handle (``kaggle://...``, ``hf://...``, a built-in preset name) when the machine is online. The
preset brings its own image size and normalisation (its ``image_converter.json``: ``image_size``,
``scale``, ``offset``, applied to raw 0-255 pixels as KerasHub's ``ImageConverter`` does) and its
own architecture (``config.json``).

Each backbone is rebuilt as a chain of its blocks, so the regimes see blocks as they see layers:

* a CNN with a feature pyramid (``ResNetBackbone``, ``CSPNetBackbone``, ``EfficientNetBackbone``,
  ``DenseNetBackbone``): one nested model per pyramid level (``P2``, ``P3``, ...; the stem goes
  with the first, the layers after the last level in ``post``), ending in the last feature map;
* a ViT (``ViTBackbone``): ``embedding``, each transformer block (``block_1`` ... ``block_N``),
  the final ``norm``, and the patch tokens put back on their grid (the class token dropped), so
  pooling, ``partial`` cuts and Grad-CAM see a feature map as they do a CNN's.

``unfreeze`` and ``cut_layer`` take a block's name (:func:`blocks` lists them; ``layer_decay``'s
grouping). A hub preset is found again on an offline kernel as the bundle ships it: its files go
to ``weights/hub/<key>/`` (:func:`cache_key`), which the kernel copies to :func:`bundled_dir`.

Keras and KerasHub are imported only when a model is built (or a handle downloaded), so
validating a pipeline with a preset folder reads two JSON files.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from foldstack.backbones.spec import BackboneSpec, register_prefix
from foldstack.core.errors import DataError
from foldstack.core.paths import user_cache

PREFIX = "hub:"
#: Backbone classes rebuilt from their feature pyramid (``pyramid_outputs``, shallow to deep).
PYRAMID_CLASSES = ("ResNetBackbone", "CSPNetBackbone", "EfficientNetBackbone", "DenseNetBackbone")
#: Backbone classes whose output is a sequence of tokens on a patch grid.
TOKEN_CLASSES = ("ViTBackbone",)
CONFIG, CONVERTER, PREPROCESSOR = "config.json", "image_converter.json", "preprocessor.json"


@dataclass(frozen=True)
class Preset:
    """What a preset's JSON files say about it.

    Attributes:
        source: the folder (or the online handle) KerasHub loads it from.
        folder: the local folder holding its files.
        class_name: the backbone's class (``ViTBackbone``).
        size: the image size its converter resizes to (the backbone's own size).
        scale, offset: its converter's normalisation of 0-255 pixels (a number, one per channel,
            or None).
        patch: a token backbone's patch size; None for a CNN.
    """

    source: str
    folder: Path
    class_name: str
    size: int
    scale: Any
    offset: Any
    patch: int | None


def is_hub(name: str) -> bool:
    return name.startswith(PREFIX)


def bundled_dir() -> Path:
    """Where an offline kernel finds the presets its bundle shipped: ``user_cache('hub')``."""
    return user_cache("hub")


def cache_key(name: str) -> str:
    """The folder name a preset is shipped and found again under: its last name and a digest of
    the whole ``hub:<preset>`` (two presets of one name stay apart)."""
    preset = name.removeprefix(PREFIX)
    tail = re.sub(r"[^A-Za-z0-9_.-]+", "-", preset.rstrip("/").split("/")[-1]).strip("-.") or "preset"
    return f"{tail}-{hashlib.sha1(preset.encode()).hexdigest()[:8]}"


def bundled_name(name: str, path: str | Path) -> str:
    """A preset file's name in the bundle's ``weights/hub/``: ``<key>/<file under the folder>``."""
    return f"{cache_key(name)}/{Path(path).resolve().relative_to(locate(name)[1].resolve()).as_posix()}"


def preset_files(name: str) -> list[Path]:
    """Every file of the preset ``hub:<preset>``, as the bundle ships them."""
    folder = locate(name)[1]
    return sorted(path for path in folder.rglob("*") if path.is_file())


def locate(name: str) -> tuple[str, Path]:
    """``(source, folder)`` of ``hub:<preset>``: the folder itself, else the copy a bundle shipped
    (:func:`bundled_dir`), else a KerasHub handle downloaded to KerasHub's cache.

    Raises:
        DataError: no such folder, no bundled copy, and not a handle (or it could not be fetched).
    """
    preset = name.removeprefix(PREFIX)
    if not preset:
        raise DataError("hub: names no preset; write hub:<folder>, hub:/kaggle/input/models/... or hub:<handle>")
    if Path(preset).expanduser().is_dir():
        folder = Path(preset).expanduser()
        return str(folder), folder
    shipped = bundled_dir() / cache_key(name)
    if shipped.is_dir():
        return str(shipped), shipped
    if preset.startswith(("/", ".", "~")):  # a path, not a handle (handles may hold dots: hf://timm/x.y)
        raise DataError(f"{name}: no preset folder {preset} (nor a bundled copy in {shipped}); "
                        "attach the Kaggle Model or save the preset there")
    return preset, _download(name, preset)


def _download(name: str, handle: str) -> Path:
    """The local folder of an online handle: KerasHub fetches its config into its own cache."""
    from keras_hub.src.utils.preset_utils import get_file

    try:
        return Path(get_file(handle, CONFIG)).parent
    except Exception as error:  # KerasHub raises ValueError, OSError or the hub client's own errors
        raise DataError(f"{name}: not a preset folder, and KerasHub could not fetch the handle "
                        f"{handle!r} ({' '.join(str(error).split())[:200]})") from None


def read_preset(name: str) -> Preset:
    """The preset's class, size and normalisation, from its JSON files (no Keras).

    Raises:
        DataError: the preset is missing, unreadable, not an image backbone foldstack knows, or
            has no image converter (so no size and normalisation).
    """
    source, folder = locate(name)
    config = _json(name, folder / CONFIG)
    class_name = str(config.get("class_name", ""))
    if class_name not in PYRAMID_CLASSES + TOKEN_CLASSES:
        raise DataError(f"{name}: a {class_name or 'preset without a class_name'}, not an image backbone the "
                        f"hub family knows ({', '.join(PYRAMID_CLASSES + TOKEN_CLASSES)})")
    converter = _converter(name, folder)
    inner = config.get("config", {})
    size = converter.get("image_size") or (inner.get("image_shape") or [None])[0]
    if not size:
        raise DataError(f"{name}: neither its image converter nor its config says its image size")
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    patch = None
    if class_name in TOKEN_CLASSES:
        patch = inner.get("patch_size")
        patch = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
    return Preset(source=source, folder=folder, class_name=class_name, size=size,
                  scale=converter.get("scale"), offset=converter.get("offset"), patch=patch)


def _json(name: str, path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{name}: {path} not found; not a KerasHub preset folder") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{name}: {path}: unreadable ({error})") from None


def _converter(name: str, folder: Path) -> dict[str, Any]:
    """The image converter's config: its own file, else the one inside ``preprocessor.json``."""
    if (folder / CONVERTER).is_file():
        return _json(name, folder / CONVERTER).get("config", {})
    if (folder / PREPROCESSOR).is_file():
        converter = _json(name, folder / PREPROCESSOR).get("config", {}).get("image_converter")
        if converter:
            return converter.get("config", {})
    raise DataError(f"{name}: the preset has no image converter ({CONVERTER}), so its image size and "
                    "normalisation are unknown; save one with ImageConverter.save_to_preset")


def _normaliser(preset: Preset) -> Callable[[Any], Any]:
    """Raw 0-255 RGB to what the backbone was trained on: ``x * scale + offset``, as its
    ``ImageConverter`` computes it (each one number or one per channel)."""
    scale, offset = preset.scale, preset.offset

    def normalise(x):
        from keras import ops

        if scale is not None:
            x = x * ops.convert_to_tensor(scale, dtype=x.dtype)
        if offset is not None:
            x = x + ops.convert_to_tensor(offset, dtype=x.dtype)
        return x

    return normalise


def _builder(name: str, preset: Preset) -> Callable[..., Any]:
    def build(input_shape: tuple[int | None, int | None, int], weights: str | None):
        import keras

        try:
            import keras_hub
        except ImportError:
            raise DataError(f"{name}: hub backbones need the package keras-hub (pip install keras-hub; "
                            "a bundle ships it with --wheel keras-hub)") from None

        options: dict[str, Any] = {"dtype": None}  # the global policy (mixed precision), not the saved one
        if preset.patch is None:
            options["image_shape"] = tuple(input_shape)
        elif input_shape[0] != preset.size or input_shape[1] != preset.size:
            raise DataError(f"{name}: a {preset.class_name} takes {preset.size} px images only (its position "
                            f"embeddings); image_size {input_shape[0]} does not fit")
        try:
            backbone = keras_hub.models.Backbone.from_preset(preset.source, load_weights=weights == "imagenet",
                                                             **options)
        except (ValueError, OSError, KeyError) as error:
            raise DataError(f"{name}: KerasHub could not load the preset ({' '.join(str(error).split())[:200]})") \
                from None
        inputs = keras.Input(input_shape, name="images")
        chain = _pyramid_chain if preset.patch is None else _token_chain
        model = keras.Model(inputs, chain(backbone, inputs, preset), name=cache_key(name).replace(".", "_"))
        if weights not in (None, "imagenet"):
            model.load_weights(weights)
        return model

    return build


def _pyramid_chain(backbone, inputs, preset: Preset):
    """The CNN as one nested model per pyramid level (the stem in the first), then ``post``."""
    import keras

    levels = list(backbone.pyramid_outputs.items())
    ends = [*levels, *([("post", backbone.output)] if backbone.output is not levels[-1][1] else [])]
    x, start = inputs, backbone.inputs[0]
    for level, end in ends:
        x = keras.Model(start, end, name=level)(x)
        start = end
    return x


def _token_chain(backbone, inputs, preset: Preset):
    """The ViT block by block, its patch tokens (the last ``(size / patch)^2``) on their grid."""
    from keras import ops

    embedding, encoder = backbone.layers[1], backbone.layers[2]
    # Names of our own, stable across KerasHub releases (0.29 spells its blocks "tranformer_block_N"):
    # ``unfreeze`` and ``cut_layer`` name them. A layer's weights are found by its place, not its name.
    blocks = [(embedding, "embedding"), (encoder.dropout, "embedding_dropout"),
              *((layer, f"block_{i}") for i, layer in enumerate(encoder.encoder_layers, start=1)),
              (encoder.layer_norm, "norm")]
    x = inputs
    for layer, name in blocks:
        layer.name = name
        x = layer(x)
    return token_grid(x, preset.size // preset.patch, ops)


def token_grid(tokens, side: int, ops):
    """``(n, tokens, dim)`` -> ``(n, side, side, dim)``: the last ``side**2`` tokens (the patches,
    after any class or register tokens), row by row as the patch embedding flattened them."""
    return ops.reshape(tokens[:, -side * side:, :], (-1, side, side, tokens.shape[-1]))


def _cutter(preset: Preset) -> Callable[[Any, str], Any]:
    def cut(model, layer: str):
        """The chain called again up to ``layer`` (a nested block's ``output`` is its own
        graph's, not the chain's), a token backbone's tokens put on their grid."""
        import keras
        from keras import ops

        chain = model.layers[1:]
        names = [block.name for block in chain]
        if layer not in names:
            raise ValueError(f"no layer {layer!r}")
        x = model.input
        for block in chain[:names.index(layer) + 1]:
            x = block(x)
        if preset.patch is not None:
            x = token_grid(x, preset.size // preset.patch, ops)
        return keras.Model(model.input, x, name=f"{model.name}_to_{layer}")

    return cut


def blocks(model) -> list[tuple[str, list[Any]]]:
    """A hub backbone's blocks, shallow to deep, as ``(name, layers)``: for ``unfreeze``,
    ``cut_layer`` and a per-block learning rate. ``model`` is what the family builds (the
    nested backbone of ``spec.create``'s model: ``model.layers[-1]``); layers without weights
    (dropout, the token grid) belong to no block."""
    return [(layer.name, [layer]) for layer in model.layers if layer.weights]


def resolve(name: str) -> BackboneSpec:
    """The spec of ``hub:<preset>``, read from the preset's files."""
    preset = read_preset(name)
    config = _json(name, preset.folder / CONFIG).get("config", {})
    if preset.patch is None:
        # KerasHub names a CNN's pyramid levels P2, P3, ... one per stage; a partial cut is one
        # of the two before the last.
        stages = len(config.get("stackwise_num_filters") or ()) or 4
        cuts = tuple(f"P{level}" for level in range(max(2, stages - 1), stages + 1))
        minimum = 32
    else:
        depth = int(config.get("num_layers", 1))
        cuts = tuple(f"block_{i}" for i in sorted({max(1, depth // 3), max(1, 2 * depth // 3)}))
        minimum = preset.size
    return BackboneSpec(name=name, family="KerasHub", build=_builder(name, preset), preprocess=_normaliser(preset),
                        default_size=preset.size, min_size=minimum, cut_layers=cuts, cut=_cutter(preset),
                        block_groups=blocks)


register_prefix(PREFIX, resolve)
