"""EfficientNet-Lite with its converted ImageNet weights classifies real photos; the reader is safe."""

from __future__ import annotations

import collections
import os
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from skimage import data, transform

from foldstack import backbones
from foldstack.backbones import efficientnet_lite
from foldstack.backbones.torch_pickle import LEGACY_MAGIC, TorchPickleError, load_state_dict

ESPRESSO = 967
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
LITE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


@pytest.fixture(scope="module")
def weights_cache(tmp_path_factory: pytest.TempPathFactory):
    """A private weights cache, so the conversion runs here once and ~/.cache is left alone. For
    this module only: a later module's tests read the usual cache (the Kaggle image's environment
    of tests/kaggle_image.py among them, which would otherwise be built again, for minutes)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FOLDSTACK_CACHE", str(tmp_path_factory.mktemp("foldstack-cache")))
        yield efficientnet_lite.weights_cache_dir()


def center_crop(image: np.ndarray, size: int, fraction: float = 0.875) -> np.ndarray:
    """TF's EfficientNet eval preprocessing: the central ``fraction`` of the short side, bicubic."""
    h, w = image.shape[:2]
    side = int(round(min(h, w) * fraction))
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[top:top + side, left:left + side].astype("float32")
    return transform.resize(crop, (size, size), order=3, preserve_range=True, anti_aliasing=False)


@pytest.mark.parametrize("name", LITE)
def test_imagenet_classifier_recognises_photos(name: str, weights_cache: Path) -> None:
    size = backbones.get(name).default_size
    model = backbones.create(name, weights="imagenet", include_top=True)
    photos = np.stack([center_crop(data.coffee(), size), center_crop(data.chelsea(), size)])

    probs = np.asarray(model(photos, training=False))

    assert probs.shape == (2, 1000)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
    assert probs[0].argmax() == ESPRESSO
    assert probs[1].argmax() in CATS


def test_second_load_uses_the_cache(weights_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = backbones.create("efficientnet_lite0", include_top=True)
    cached = weights_cache / "efficientnet_lite0.weights.h5"
    assert cached.exists()
    mtime = cached.stat().st_mtime_ns

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again instead of loading the cache")

    monkeypatch.setattr(efficientnet_lite, "_convert", no_conversion)
    second = backbones.create("efficientnet_lite0", include_top=True)

    assert cached.stat().st_mtime_ns == mtime
    for a, b in zip(first.weights, second.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("size", [32, 64])
def test_pretrained_features_at_small_sizes(size: int, weights_cache: Path) -> None:
    features = backbones.create("efficientnet_lite0", weights="imagenet", input_shape=(size, size, 3))
    classifier = backbones.create("efficientnet_lite0", weights="imagenet", include_top=True)

    out = np.asarray(features(np.full((1, size, size, 3), 127.0, dtype="float32"), training=False))

    assert out.shape == (1, size // 32, size // 32, 1280)
    kernel = lambda model: np.asarray(model.layers[-1].get_layer("top_conv").kernel)  # noqa: E731
    np.testing.assert_array_equal(kernel(features), kernel(classifier))


def test_pretrained_cut_layers(weights_cache: Path) -> None:
    spec = backbones.get("efficientnet_lite0")
    channels = []
    for cut in spec.cut_layers:
        model = backbones.create(spec.name, weights="imagenet", input_shape=(64, 64, 3), cut_at=cut)
        channels.append(model.output.shape[-1])
    assert channels == [240, 672]  # the 6x expansions at the start of stages 4 (of 40) and 6 (of 112)
    with pytest.raises(ValueError, match="suggested: block4a"):
        backbones.create(spec.name, weights=None, input_shape=(64, 64, 3), cut_at="no_such_layer")


def test_variant_scaling_matches_the_weights() -> None:
    # EfficientNet-Lite2: width 1.1 rounds 40 -> 48, 112 -> 120; depth 1.2 gives 21 blocks.
    lite2 = efficientnet_lite.VARIANTS["efficientnet_lite2"]
    assert [efficientnet_lite.round_filters(f, lite2.width) for f in (16, 24, 40, 80, 112, 192, 320)] == \
        [16, 24, 48, 88, 120, 208, 352]
    assert efficientnet_lite.stage_repeats(lite2.depth) == [1, 3, 3, 4, 4, 5, 1]
    assert sum(efficientnet_lite.stage_repeats(1.0)) == 16


# --- the restricted torch unpickler, on tiny hand-made files -------------------------------------

class _Storage:
    def __init__(self, key: str, kind: str, values: np.ndarray):
        self.key, self.kind, self.values = key, kind, values


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, shape: tuple, stride: tuple):
        self.args = (storage, offset, shape, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


class _TorchPickler(pickle.Pickler):
    """Pickles like torch.save: storages become persistent ids."""

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", getattr(sys.modules["torch"], obj.kind), obj.key, "cpu", obj.values.size, None)
        return None


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Just enough of a ``torch`` module for pickle to name its globals, as torch.save does."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only ever named, never called")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for kind in ("FloatStorage", "LongStorage"):
        setattr(torch, kind, type(kind, (), {"__module__": "torch"}))
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)


def _tiny_state() -> tuple[dict, list[_Storage]]:
    floats = _Storage("0", "FloatStorage", np.arange(6, dtype="<f4"))
    longs = _Storage("1", "LongStorage", np.array([7], dtype="<i8"))
    state = collections.OrderedDict(
        matrix=_Tensor(floats, 0, (2, 3), (3, 1)),
        transposed=_Tensor(floats, 0, (3, 2), (1, 3)),
        column=_Tensor(floats, 1, (2,), (3,)),
        count=_Tensor(longs, 0, (), ()),
    )
    return state, [floats, longs]


def _write_legacy(path: Path, state: dict, storages: list[_Storage]) -> None:
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        _TorchPickler(f, protocol=2).dump(state)
        pickle.dump([s.key for s in storages], f, protocol=2)
        for s in storages:
            f.write(struct.pack("<q", s.values.size) + s.values.tobytes())


def _check_tiny(tensors: dict[str, np.ndarray]) -> None:
    grid = np.arange(6, dtype="float32").reshape(2, 3)
    np.testing.assert_array_equal(tensors["matrix"], grid)
    np.testing.assert_array_equal(tensors["transposed"], grid.T)
    np.testing.assert_array_equal(tensors["column"], [1.0, 4.0])
    assert tensors["count"].shape == () and tensors["count"] == 7 and tensors["count"].dtype == np.int64


def test_reads_legacy_format(tmp_path: Path, fake_torch: None) -> None:
    state, storages = _tiny_state()
    _write_legacy(tmp_path / "tiny.pth", state, storages)
    _check_tiny(load_state_dict(tmp_path / "tiny.pth"))


def test_reads_zip_format(tmp_path: Path, fake_torch: None) -> None:
    state, storages = _tiny_state()
    with zipfile.ZipFile(tmp_path / "tiny.pt", "w") as archive:
        with archive.open("tiny/data.pkl", "w") as f:
            _TorchPickler(f, protocol=2).dump(state)
        for s in storages:
            archive.writestr(f"tiny/data/{s.key}", s.values.tobytes())
    _check_tiny(load_state_dict(tmp_path / "tiny.pt"))


def test_refuses_other_globals(tmp_path: Path, fake_torch: None) -> None:
    _, storages = _tiny_state()
    _write_legacy(tmp_path / "evil.pth", {"payload": os.getcwd}, storages)
    with pytest.raises(TorchPickleError, match="refusing to load global"):
        load_state_dict(tmp_path / "evil.pth")


def test_refuses_views_past_the_storage(tmp_path: Path, fake_torch: None) -> None:
    _, storages = _tiny_state()
    _write_legacy(tmp_path / "bad.pth", {"w": _Tensor(storages[0], 4, (3,), (1,))}, storages[:1])
    with pytest.raises(TorchPickleError, match="past its storage"):
        load_state_dict(tmp_path / "bad.pth")
