"""Non-square image sizes, and a larger cache_size cropped to image_size (issue 23)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import make_config
from foldstack.core.config import ConfigError
from foldstack.data import tables
from foldstack.data.arrays import ImageReader
from foldstack.data.cache import CacheFormat, cache_file, model_cache, open_images
from foldstack.training.fold_task import FoldTask
from foldstack.training.loader import view_batches
from foldstack.training.regimes import image_network, train_batches

CNN = {"name": "m", "backbone": "small_cnn", "weights": "none", "regime": "scratch", "batch_size": 8}


def test_sizes_parse_and_refuse_in_one_line() -> None:
    model = make_config(models=[{**CNN, "image_size": [24, 32], "cache_size": [32, 40]}]).models[0]
    assert model.image_size == (24, 32) and model.cached_size == (32, 40)
    assert model.model_dump(mode="json")["image_size"] == [24, 32]
    square = make_config(models=[{**CNN, "image_size": [32, 32], "cache_size": 32}]).models[0]
    assert square.image_size == 32 and square.cache_size is None and "cache_size" not in square.model_dump()
    with pytest.raises(ConfigError, match=r"models.0.cache_size = 24: Value error, 24 is smaller than image_size 32"):
        make_config(models=[{**CNN, "image_size": 32, "cache_size": 24}])
    with pytest.raises(ConfigError, match=r"cache_size = \[40, 30\]: Value error, \(40, 30\) is smaller than image_size \(24, 32\)"):
        make_config(models=[{**CNN, "image_size": [24, 32], "cache_size": [40, 30]}])
    crop = {"train": [{"__class_fullname__": "RandomCrop", "height": 24, "width": 24, "p": 1.0}]}
    with pytest.raises(ConfigError, match=r"models\[0\]: augment.train\[0\] RandomCrop without a cache_size: set "
                                          r"models\[0\].cache_size larger than image_size"):
        make_config(augment=crop, models=[{**CNN, "image_size": 32}])
    assert make_config(augment=crop, models=[{**CNN, "image_size": 24, "cache_size": 32}])
    with pytest.raises(ConfigError, match=r"progressive resizing needs a square image_size and no cache_size"):
        make_config(models=[{**CNN, "image_size": [24, 32], "epochs": 3, "progressive": [{"size": 16, "epochs": 1}]}])
    with pytest.raises(ConfigError, match=r"models.0.image_size = \[4, 32\]: Value error, each side must be 8 to 1024 px"):
        make_config(models=[{**CNN, "image_size": [4, 32]}])


def test_caches_are_keyed_by_size_and_format(tmp_path: Path) -> None:
    assert cache_file(tmp_path, "train", (24, 32)) == tmp_path / "24x32" / "train.npy"
    assert cache_file(tmp_path, "test", 32, CacheFormat("webp")) == tmp_path / "32-webp" / "test.pack"
    assert cache_file(tmp_path, "test", (24, 32), CacheFormat("jpeg", 80)) == tmp_path / "24x32-jpeg80" / "test.pack"


def test_random_crops_to_train_and_the_centre_to_predict(tiny_digits, tmp_path: Path) -> None:
    cfg, paths = tiny_digits
    model = make_config(models=[{**CNN, "image_size": [24, 32], "cache_size": [32, 40]}]).models[0]
    train = tables.load_train_table(cfg, paths)
    files, ids = train["path"].tolist()[:16], train["id"].tolist()[:16]
    path = model_cache(tmp_path, "train", files, ids, model, read=ImageReader())
    assert path == tmp_path / "32x40" / "train.npy"
    images = open_images(path)
    assert images.shape == (16, 32, 40, 3)
    task = FoldTask(model=model, task="multiclass", metric="accuracy", y=np.arange(16) % 10, n_classes=10,
                    train_index=np.arange(12), valid_index=np.arange(12, 16), augment=cfg.augment,
                    caches={"train": path}, fold_dir=tmp_path, seed=0)
    batch = train_batches(task, {"train": images})[0][0]
    assert batch.shape == (8, 24, 32, 3)
    centre = view_batches(images, np.arange(4), cfg.augment, [], 4, model=model)[0][0]
    np.testing.assert_array_equal(centre, images[:4, 4:28, 4:36])
    network, _ = image_network(task)
    assert network.input_shape == (None, 24, 32, 3) and network.predict(batch, verbose=0).shape == (8, 10)
