"""Array images (README "Array images"): ``.npy``/``.npz`` per id and a table's band columns, read
and scaled as declared, cached with their channels, fed to a backbone whose first convolution is
adapted to them (or mapped to RGB), end to end through the CLI; each bad input one line."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.datasets import load_digits

from foldstack import cli
from foldstack.backbones.spec import adapt_input_channels, adapt_input_kernel
from foldstack.core.config import ConfigError
from foldstack.core.errors import DataError
from foldstack.core.paths import Paths
from foldstack.data.arrays import ImageReader, load_array, scaled, write_bands
from foldstack.data.sources import MARKER
from foldstack.data.cache import cached_images, open_images
from foldstack.pipeline import parse_pipeline
from foldstack.stages import download
from foldstack.training.fold_task import fold_fingerprint, recipe_fingerprint

from conftest import predict_images, small_cnn_pipeline

CLASSES = 3
N_TRAIN, N_TEST = 48, 12


def _digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` digits below :data:`CLASSES` (8x8, values 0-16) and their labels."""
    digits = load_digits()
    keep = np.flatnonzero(digits.target < CLASSES)[:n]
    return digits.images[keep], digits.target[keep]


def _tables(folder: Path, labels: np.ndarray, ids: list[str]) -> None:
    test_ids = ids[N_TRAIN:]
    pd.DataFrame({"id": test_ids, "label": 0}).to_csv(folder / "sample_submission.csv", index=False)
    pd.DataFrame({"id": test_ids, "label": labels[N_TRAIN:]}).to_csv(folder / "solution.csv", index=False)


def write_band_competition(folder: Path) -> None:
    """Statoil-shaped: ``train.json`` and ``test.json`` records whose ``band_1`` is the digit and
    ``band_2`` its noisy copy, each a list of 64 values (8x8)."""
    images, labels = _digits(N_TRAIN + N_TEST)
    noisy = images + np.random.default_rng(0).normal(0, 2, images.shape)
    ids = [f"b{i:03d}" for i in range(len(images))]
    records = [{"id": i, "band_1": a.ravel().tolist(), "band_2": b.ravel().round(3).tolist(), "label": int(y)}
               for i, a, b, y in zip(ids, images, noisy, labels)]
    folder.mkdir(parents=True)
    (folder / "train.json").write_text(json.dumps(records[:N_TRAIN]))
    (folder / "test.json").write_text(json.dumps([{k: r[k] for k in ("id", "band_1", "band_2")}
                                                 for r in records[N_TRAIN:]]))
    _tables(folder, labels, ids)


def four_channels(image: np.ndarray) -> np.ndarray:
    """A digit as 4 float channels: itself, inverted, transposed, and a constant."""
    return np.stack([image, 16 - image, image.T, np.full_like(image, 3.0)], axis=-1).astype(np.float32)


def write_array_competition(folder: Path) -> None:
    """Four-channel float ``.npy`` files in ``train/`` and ``test/``, a ``train.csv`` of labels."""
    images, labels = _digits(N_TRAIN + N_TEST)
    ids = [f"a{i:03d}" for i in range(len(images))]
    for split in ("train", "test"):
        (folder / split).mkdir(parents=True)
    for n, (image_id, image) in enumerate(zip(ids, images)):
        np.save(folder / ("train" if n < N_TRAIN else "test") / f"{image_id}.npy", four_channels(image))
    pd.DataFrame({"id": ids[:N_TRAIN], "label": labels[:N_TRAIN]}).to_csv(folder / "train.csv", index=False)
    _tables(folder, labels, ids)


BANDS = {"image_source": "column", "train_csv": "train.json", "test_csv": "test.json",
         "bands": ["band_1", "band_2"], "band_shape": [8, 8], "scale": {"min": -4, "max": 20}}
ARRAYS = {"image_source": "arrays", "channels": 4, "scale": "per_channel"}
AUGMENT = {"train": [{"__class_fullname__": "HorizontalFlip", "p": 0.5},
                     {"__class_fullname__": "Rotate", "limit": 10, "p": 0.5}],
           "tta": [[], [{"__class_fullname__": "HorizontalFlip", "p": 1.0}]]}


def _pipeline(name: str, data: dict, folder: Path, **model) -> dict:
    raw = small_cnn_pipeline(name, "multiclass", "accuracy", {**data, "source": {"type": "local", "path": str(folder)}},
                             augment=AUGMENT)
    raw["models"][0].update(model)
    return raw


def run_cli(raw: dict, root: Path) -> Paths:
    """Every stage from download to submit through the command line."""
    path = root / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    for stage in ("download", "folds", "train", "predict", "stack", "submit"):
        assert cli.main([stage, "--pipeline", str(path), "--root", str(root)]) == 0, stage
    return Paths.for_pipeline(raw["name"], root)


@pytest.fixture(scope="module")
def bands(tmp_path_factory) -> Paths:
    root = tmp_path_factory.mktemp("bands")
    write_band_competition(root / "competition")
    return run_cli(_pipeline("bands", BANDS, root / "competition", to_rgb=[0, 1, "mean"]), root)


@pytest.fixture(scope="module")
def arrays(tmp_path_factory) -> Paths:
    root = tmp_path_factory.mktemp("arrays")
    write_array_competition(root / "competition")
    return run_cli(_pipeline("arrays", ARRAYS, root / "competition"), root)


def _submitted(paths: Paths) -> pd.DataFrame:
    written = pd.read_csv(_newest(paths))
    sample = pd.read_csv(paths.data / "sample_submission.csv")
    assert written["id"].tolist() == sample["id"].tolist()
    assert set(written["label"]) <= set(range(CLASSES))
    return written


def _newest(paths: Paths) -> Path:
    index = pd.read_csv(paths.submissions / "index.csv")
    return paths.submissions / index["file"].iloc[-1]


# --- end to end --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_band_columns_become_two_channel_images_end_to_end(bands: Paths) -> None:
    # download wrote each row's bands, stacked, as an .npy the later stages read
    array = np.load(bands.data / "train" / "b000.npy")
    images, _ = _digits(1)
    assert array.shape == (8, 8, 2)
    np.testing.assert_allclose(array[..., 0], images[0])
    cache = open_images(bands.cache / "16" / "train.npy")
    assert cache.shape == (N_TRAIN, 16, 16, 2)
    expected = scaled(array, (-4, 20))  # the declared range, then resized
    assert abs(float(cache[0].mean()) - float(expected.mean())) < 3
    assert (bands.test / "cnn.parquet").is_file()
    _submitted(bands)


@pytest.mark.slow
def test_four_channel_arrays_end_to_end_with_predict_images_and_gradcam(arrays: Paths, tmp_path: Path) -> None:
    cache = open_images(arrays.cache / "16" / "test.npy")
    assert cache.shape == (N_TEST, 16, 16, 4)
    # per_channel: every channel spans 0-255, the constant one is 0
    assert cache[..., 0].max() > 200 and cache[..., 3].max() == 0
    _submitted(arrays)
    frame = predict_images(arrays, "test", tmp_path / "arrays.csv", "--explain")
    stacked = pd.read_parquet(arrays.stack / "test.parquet").set_index("id")
    ids = frame["image"].str.removesuffix(".npy")
    np.testing.assert_allclose(frame[[str(c) for c in range(CLASSES)]].to_numpy(),
                               stacked.loc[ids, [str(c) for c in range(CLASSES)]].to_numpy(), atol=1e-5)
    assert all((tmp_path / picture).is_file() for picture in frame["heatmap"])


# --- the first convolution ---------------------------------------------------------------------------


def test_an_adapted_kernel_sums_to_the_rgb_filters_over_the_channels() -> None:
    kernel = np.random.default_rng(0).normal(size=(3, 3, 3, 8))
    for channels in (1, 2, 4, 7):
        adapted = adapt_input_kernel(kernel, channels)
        assert adapted.shape == (3, 3, channels, 8)
        np.testing.assert_allclose(adapted.sum(axis=2), kernel.sum(axis=2), atol=1e-12)


@pytest.mark.parametrize("channels", [1, 2, 5])
def test_equal_channels_give_the_rgb_networks_output_small_cnn(channels: int) -> None:
    import keras

    from foldstack.backbones import small_cnn

    keras.utils.set_random_seed(0)
    rgb = small_cnn.build((16, 16, 3), None)
    other = adapt_input_channels(rgb, small_cnn.build((16, 16, channels), None))
    grey = np.random.default_rng(1).uniform(0, 1, (2, 16, 16, 1)).astype("float32")
    expected = rgb.predict(np.repeat(grey, 3, axis=-1), verbose=0)
    np.testing.assert_allclose(other.predict(np.repeat(grey, channels, axis=-1), verbose=0), expected,
                               rtol=1e-4, atol=1e-4)


def test_equal_channels_give_the_imagenet_networks_output_efficientnet_lite() -> None:
    from foldstack import backbones

    rgb = backbones.create("efficientnet_lite0", "imagenet", input_shape=(64, 64, 3))
    four = backbones.create("efficientnet_lite0", "imagenet", input_shape=(64, 64, 4))
    grey = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 1)).astype("float32")
    expected = rgb.predict(np.repeat(grey, 3, axis=-1), verbose=0)
    assert np.abs(expected).mean() > 0.01
    np.testing.assert_allclose(four.predict(np.repeat(grey, 4, axis=-1), verbose=0), expected, atol=1e-4)
    # to_rgb: the backbone sees channels 2, 0 and the mean as R, G, B
    mapped = backbones.create("efficientnet_lite0", "imagenet", input_shape=(64, 64, 4), to_rgb=[2, 0, "mean"])
    image = np.random.default_rng(1).integers(0, 256, (1, 64, 64, 4)).astype("float32")
    as_rgb = np.stack([image[..., 2], image[..., 0], image.mean(axis=-1)], axis=-1)
    np.testing.assert_allclose(mapped.predict(image, verbose=0), rgb.predict(as_rgb, verbose=0), atol=1e-4)


# --- reading and scaling -----------------------------------------------------------------------------


def test_arrays_are_scaled_as_declared_and_cached_with_their_channels(tmp_path: Path) -> None:
    image = np.arange(2 * 3 * 2, dtype=np.int16).reshape(2, 3, 2) * 100 - 300
    np.testing.assert_array_equal(scaled(image, (-300, 800))[..., 0], np.round((image[..., 0].astype(float) + 300) * 255 / 1100))
    per_image = scaled(image, "per_image")
    assert per_image.min() == 0 and per_image.max() == 255
    per_channel = scaled(image, "per_channel")
    assert (per_channel.min(axis=(0, 1)) == 0).all() and (per_channel.max(axis=(0, 1)) == 255).all()
    assert scaled(np.full((2, 2, 1), 7.0), "per_image").max() == 0  # constant: no division by zero
    np.save(tmp_path / "a.npy", image)
    np.savez(tmp_path / "b.npz", image=image, other=np.zeros(3))
    np.save(tmp_path / "grey.npy", image[..., 0])
    assert load_array(tmp_path / "b.npz", 2).shape == (2, 3, 2)
    assert load_array(tmp_path / "grey.npy", 1).shape == (2, 3, 1)
    read = ImageReader("arrays", 2, "per_image")
    cache = cached_images([str(tmp_path / "a.npy"), str(tmp_path / "b.npz")], ["a", "b"], 8, tmp_path / "c" / "t.npy",
                          read=read)
    assert cache.shape == (2, 8, 8, 2) and cache.dtype == np.uint8
    # another scale is another cache
    again = cached_images([str(tmp_path / "a.npy"), str(tmp_path / "b.npz")], ["a", "b"], 8, tmp_path / "c" / "t.npy",
                          read=ImageReader("arrays", 2, (0, 1e6)))
    assert again.max() < cache.max()
    # any channel count: each channel resized alone, as its grey image would be
    five = np.random.default_rng(0).uniform(0, 1, (6, 6, 5))
    np.save(tmp_path / "five.npy", five)
    cached = cached_images([str(tmp_path / "five.npy")], ["f"], 12, tmp_path / "d" / "t.npy",
                           read=ImageReader("arrays", 5, (0, 1)))
    from foldstack.data.images import resize

    for c in range(5):
        np.testing.assert_array_equal(cached[0, ..., c], resize(scaled(five, (0, 1))[..., c], 12))


# --- bad input: one line each ------------------------------------------------------------------------


def _one_line(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


def test_an_array_of_the_wrong_shape_or_channels_names_its_file(tmp_path: Path) -> None:
    np.save(tmp_path / "three.npy", np.zeros((4, 4, 3)))
    np.save(tmp_path / "cube.npy", np.zeros((2, 4, 4, 4)))
    with pytest.raises(DataError) as error:
        load_array(tmp_path / "three.npy", 4)
    _one_line(error, "three.npy", "(4, 4, 3)", "HxWx4")
    with pytest.raises(DataError) as error:
        load_array(tmp_path / "cube.npy", 4)
    _one_line(error, "cube.npy", "(2, 4, 4, 4)")
    (tmp_path / "broken.npy").write_bytes(b"not an array")
    with pytest.raises(DataError) as error:
        load_array(tmp_path / "broken.npy", 4)
    _one_line(error, "broken.npy", "cannot read array")
    with pytest.raises(DataError) as error:
        load_array(tmp_path / "absent.npy", 4)
    _one_line(error, "absent.npy", "not found")


def test_a_missing_npy_names_its_row_and_id(tmp_path: Path) -> None:
    write_array_competition(tmp_path / "competition")
    (tmp_path / "competition" / "train" / "a005.npy").unlink()
    raw = _pipeline("arrays", ARRAYS, tmp_path / "competition")
    path = tmp_path / "arrays.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert cli.main(["download", "--pipeline", str(path), "--root", str(tmp_path)]) == 0
    with pytest.raises(DataError) as error:
        from foldstack.stages import folds

        folds.run(parse_pipeline(raw), Paths.for_pipeline("arrays", tmp_path))
    _one_line(error, "train.csv", "row 7", "'a005'", "a005.npy", "not found")


@pytest.mark.parametrize("cell, problem", [
    (list(range(63)), "band 'band_2' holds 63 values; band_shape 8x8 needs 64"),
    ([1.0] * 63 + ["x"], "band 'band_2' holds 'x', not a number"),
])
def test_a_band_list_of_the_wrong_length_names_its_row(tmp_path: Path, cell, problem: str) -> None:
    folder = tmp_path / "competition"
    write_band_competition(folder)
    records = json.loads((folder / "train.json").read_text())
    records[4]["band_2"] = cell
    (folder / "train.json").write_text(json.dumps(records))
    cfg = parse_pipeline(_pipeline("bands", BANDS, folder))
    with pytest.raises(DataError) as error:
        write_bands(folder, cfg.data)
    _one_line(error, "train.json: row 5 (id 'b004')", problem)


def test_a_band_cell_of_a_csv_table_is_read_as_numbers(tmp_path: Path) -> None:
    folder = tmp_path / "competition"
    folder.mkdir()
    pd.DataFrame({"id": ["x", "y"], "b": ["[1, 2, 3, 4]", "5 6 7"], "label": [0, 1]}).to_csv(folder / "t.csv", index=False)
    pd.DataFrame({"id": ["z"], "b": ["1,2,3,4"]}).to_csv(folder / "s.csv", index=False)
    data = {**BANDS, "train_csv": "t.csv", "test_csv": "s.csv", "bands": ["b"], "band_shape": [2, 2]}
    cfg = parse_pipeline(_pipeline("csv", data, folder))
    with pytest.raises(DataError) as error:
        write_bands(folder, cfg.data)
    _one_line(error, "t.csv: row 3 (id 'y')", "holds 3 values")


@pytest.mark.parametrize("change, expected", [
    (lambda r: r["data"].pop("scale"), "image_source 'arrays' needs scale"),
    (lambda r: r["data"].pop("channels"), "image_source 'arrays' needs channels"),
    (lambda r: r["data"].update(scale="minmax"), "data.scale = 'minmax': Value error, per_image, per_channel or"),
    (lambda r: r["data"].update(scale={"min": 1, "max": 0}), "data.scale = {'min': 1, 'max': 0}: Value error, max (0) must be above min (1)"),
    (lambda r: r["data"].update(extension=".png"), "extension '.png': image_source 'arrays' reads .npy or .npz"),
    (lambda r: r["models"][0].update(to_rgb=[0, 4, "mean"]), "models.0.to_rgb = [0, 4, 'mean']: Value error, names channel 4, but the images have 4"),
    (lambda r: r["models"][0].update(cache={"format": "jpeg"}), "models.0.cache = {'format': 'jpeg'}: Value error, cache format 'jpeg' encodes RGB images"),
    (lambda r: r.update(augment={"train": [{"__class_fullname__": "HueSaturationValue", "p": 0.5}]}),
     "augment.train = [{'__class_fullname__': 'HueSaturationValue', 'p': 0.5}]: Value error, [0] HueSaturationValue cannot take 4-channel images"),
    (lambda r: r["data"].update(image_source="column", bands=["a"], band_shape=[8, 8], channels=1),
     "image_source 'column' needs test_csv"),
])
def test_array_keys_are_checked_in_one_line(tmp_path: Path, change, expected: str) -> None:
    raw = _pipeline("arrays", ARRAYS, tmp_path)
    change(raw)
    with pytest.raises(ConfigError) as error:
        parse_pipeline(copy.deepcopy(raw))
    _one_line(error, expected)


def test_files_pipelines_keep_their_model_dump() -> None:
    """The new keys stay out of an image-file model's dump, so its trained folds stay valid."""
    raw = small_cnn_pipeline("files", "multiclass", "accuracy", {})
    dumped = parse_pipeline(raw).models[0].model_dump(mode="json")
    assert "channels" not in dumped and "to_rgb" not in dumped
    with pytest.raises(ConfigError) as error:
        raw["models"][0]["to_rgb"] = [0, 1, 2]
        parse_pipeline(raw)
    _one_line(error, "models.0.to_rgb", "is for array images")


def test_a_changed_scale_trains_the_folds_again_and_image_files_keep_their_fingerprint() -> None:
    """How arrays are scaled is part of a fold's recipe (its cache is rebuilt with other pixels, so
    weights trained on the old ones are stale); an image-file pipeline's fingerprint is as before."""
    def fingerprint(raw: dict) -> str:
        cfg = parse_pipeline(raw)
        return fold_fingerprint(cfg, cfg.models[0], 0, "folds")

    arrays = _pipeline("a", ARRAYS, Path("/nowhere"))
    rescaled = _pipeline("a", {**ARRAYS, "scale": {"min": 0, "max": 1}}, Path("/nowhere"))
    assert fingerprint(arrays) != fingerprint(rescaled)
    files = parse_pipeline(small_cnn_pipeline("files", "multiclass", "accuracy", {}))
    assert fold_fingerprint(files, files.models[0], 0, "folds") == recipe_fingerprint(
        files.models[0], files.augment, files.task, files.metric, 0, "folds")


def test_a_changed_band_shape_lays_the_bands_out_again(tmp_path: Path) -> None:
    """A download's marker records how a column source's bands were written: a new ``band_shape``
    (the same tables) writes them again at the new shape; run again unchanged, it is up to date."""
    folder = tmp_path / "competition"
    write_band_competition(folder)
    raw = _pipeline("bands", BANDS, folder)
    cfg = parse_pipeline(raw)
    paths = Paths.for_pipeline("bands", tmp_path / "root")
    download.run(cfg, paths)
    first = paths.data / cfg.data.train_dir / "b000.npy"
    assert np.load(first).shape == (8, 8, 2)

    records = json.loads((folder / "train.json").read_text())
    wide = parse_pipeline({**raw, "data": {**raw["data"], "band_shape": [4, 16]}})
    download.run(wide, paths)
    assert np.load(first).shape == (4, 16, 2)
    np.testing.assert_array_equal(np.load(first)[..., 0].ravel(), np.asarray(records[0]["band_1"], dtype=np.float32))

    marker = (paths.data / MARKER).stat().st_mtime_ns
    download.run(wide, paths)  # nothing changed: up to date
    assert (paths.data / MARKER).stat().st_mtime_ns == marker
