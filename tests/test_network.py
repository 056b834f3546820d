"""Networks and the features regime's cache key."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from foldstack.training.fold_task import FoldTask, features_key
from foldstack.training.network import build_network, create_backbone

from conftest import make_config

PARTIAL = {"name": "p", "backbone": "small_cnn", "weights": "none", "image_size": 16, "regime": "partial",
           "cut_layer": "block1_pool", "dense_units": [32, 16], "dropout": 0.3}


def _task(model_raw: dict, tmp_path: Path) -> FoldTask:
    cfg = make_config(models=[model_raw])
    return FoldTask(model=cfg.models[0], task=cfg.task, metric=cfg.metric, y=np.zeros(4, dtype=int), n_classes=10,
                    train_index=np.arange(2), valid_index=np.arange(2, 4), augment=cfg.augment, caches={},
                    fold_dir=tmp_path, seed=0)


def test_no_two_dropout_layers_in_a_row(tmp_path: Path) -> None:
    for raw in (PARTIAL, {**PARTIAL, "regime": "scratch", "dense_units": []}):
        task = _task(raw, tmp_path)
        network = build_network(task, create_backbone(task.model), frozen_statistics=True,
                                dense_units=task.model.dense_units if raw["regime"] == "partial" else ())
        kinds = [type(layer).__name__ for layer in network.layers]
        assert "Dropout" in kinds
        assert not any(a == b == "Dropout" for a, b in zip(kinds, kinds[1:])), kinds
        assert kinds[-2:] == ["Dropout", "Dense"]  # dropout right before the classifier
        keras.backend.clear_session()


def test_features_key_depends_on_the_backbone_pass_alone() -> None:
    """A new learning rate, head or epoch count must not run the backbone again; a new size,
    backbone, weights, TTA view or image set must."""
    base = {"name": "f", "backbone": "small_cnn", "weights": "none", "image_size": 16, "regime": "features"}
    ids = ["a", "b"]

    def key(ids=ids, augment=None, **changes):
        cfg = make_config(models=[{**base, **changes}], **({"augment": augment} if augment else {}))
        return features_key(cfg.models[0], cfg.augment, ids)

    same = key()
    for head_only in ({"lr": 0.1}, {"epochs": 3}, {"dropout": 0.5}, {"batch_size": 7}, {"patience": 9}):
        assert key(**head_only) == same, head_only
    assert key(image_size=24) != same
    assert key(backbone="efficientnet_lite0", weights="none", image_size=32) != same
    assert key(augment={"tta": [[], [{"__class_fullname__": "HorizontalFlip", "p": 1.0}]]}) != same
    assert key(ids=["a", "c"]) != same
    assert key(cut_layer="block1_pool") != same  # the cut backbone's features are others
