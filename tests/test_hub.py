"""The KerasHub family (``backbone: hub:<preset>``, issue 24 item 1), on tiny presets this module
builds and saves itself (random weights, 32 px): a ViT and a ResNet, each with its image
converter, as ``save_to_preset`` writes them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import make_config
from test_gradcam import _corner_images, fit_as_a_fold
from test_kernel_offline import SLUG, competition, foldstack

from foldstack import backbones
from foldstack.backbones import hub, pretrained
from foldstack.core import metrics
from foldstack.core.config import ConfigError
from foldstack.stages import bundle
from foldstack.training.fold_task import FoldTask
from foldstack.training.gradcam import explain
from foldstack.training.network import set_trainable
from foldstack.training.optim import layer_scales

SIZE = 32
#: ImageNet's mean and deviation as a converter's scale and offset of 0-255 pixels.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def save_vit(folder: Path) -> Path:
    import keras_hub

    keras_hub.models.ViTBackbone(image_shape=(SIZE, SIZE, 3), patch_size=8, num_layers=2, num_heads=2,
                                 hidden_dim=16, mlp_dim=32).save_to_preset(str(folder))
    keras_hub.layers.ViTImageConverter(image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1.0).save_to_preset(str(folder))
    return folder


def save_resnet(folder: Path) -> Path:
    import keras_hub

    keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 64],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        use_pre_activation=True, image_shape=(None, None, 3)).save_to_preset(str(folder))
    keras_hub.layers.ResNetImageConverter(
        image_size=(SIZE, SIZE), scale=[1 / (255 * s) for s in STD],
        offset=[-m / s for m, s in zip(MEAN, STD)]).save_to_preset(str(folder))
    return folder


@pytest.fixture(scope="module")
def presets(tmp_path_factory) -> dict[str, str]:
    keras.utils.set_random_seed(0)  # the presets' random weights, the same in every run
    root = tmp_path_factory.mktemp("presets")
    return {"vit": f"hub:{save_vit(root / 'vit')}", "resnet": f"hub:{save_resnet(root / 'resnet')}"}


def _rgb(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, size=(n, SIZE, SIZE, 3)).astype("float32")


def test_a_preset_brings_its_size_normalisation_and_a_feature_map(presets: dict[str, str]) -> None:
    import keras_hub

    images = _rgb(2)
    for kind, name in presets.items():
        spec = backbones.get(name)
        assert spec.default_size == SIZE and spec.family == "KerasHub"
        folder = name.removeprefix("hub:")
        # The preset's own converter and the family's preprocessing agree on 0-255 pixels.
        converter = keras_hub.layers.ImageConverter.from_preset(folder)
        np.testing.assert_allclose(np.asarray(spec.preprocess(images)), np.asarray(converter(images)), atol=1e-5)
        model = backbones.create(name)
        assert model.input.shape[1:] == (SIZE, SIZE, 3) and len(model.output.shape) == 4, kind
        # The preset's weights, not random ones: the same outputs as KerasHub's own backbone.
        hub_backbone = keras_hub.models.Backbone.from_preset(folder)
        expected = np.asarray(hub_backbone(converter(images)))
        if kind == "vit":  # the patch tokens on their 4x4 grid, the class token dropped
            expected = expected[:, 1:, :].reshape(2, SIZE // 8, SIZE // 8, -1)
        np.testing.assert_allclose(np.asarray(model(images)), expected, atol=1e-4)


def test_a_pipeline_takes_the_presets_size_and_refuses_a_bad_preset_in_one_line(presets, tmp_path: Path) -> None:
    model = {"name": "h", "weights": "none", "regime": "scratch", "epochs": 1}
    cfg = make_config(models=[{**model, "backbone": presets["resnet"]}])
    assert cfg.models[0].image_size == SIZE
    with pytest.raises(ConfigError, match=r"backbone.*no preset folder .*nowhere.*attach the Kaggle Model") as missing:
        make_config(models=[{**model, "backbone": f"hub:{tmp_path / 'nowhere'}"}])
    text = tmp_path / "bert"
    text.mkdir()
    (text / "config.json").write_text(json.dumps({"class_name": "BertBackbone", "config": {}}))
    with pytest.raises(ConfigError, match=r"a BertBackbone, not an image backbone the hub family knows") as other:
        make_config(models=[{**model, "backbone": f"hub:{text}"}])
    assert "\n" not in str(missing.value) and "\n" not in str(other.value)
    # A ViT's position embeddings fit its own size only: smaller is refused when the YAML is read.
    with pytest.raises(ConfigError, match=r"needs at least 32"):
        make_config(models=[{**model, "backbone": presets["vit"], "image_size": 16}])


def test_unfreeze_and_partial_go_by_block(presets: dict[str, str]) -> None:
    for name, block, earlier in ((presets["resnet"], "P3", "P2"),
                                 (presets["vit"], "block_2", "block_1")):
        spec = backbones.get(name)
        model = backbones.create(name, weights=None)
        inner = model.layers[-1]
        names = [group for group, _ in spec.block_groups(inner)]
        assert names.index(earlier) < names.index(block)
        set_trainable(model, block)
        training = {group: sum(len(layer.trainable_weights) for layer in layers) for group, layers in spec.block_groups(inner)}
        assert training[block] > 0 and training[earlier] == 0, (name, training)
        cut = backbones.create(name, weights=None, cut_at=earlier)
        assert len(cut.output.shape) == 4  # a feature map, the tokens on their grid for the ViT


def test_layer_decay_goes_by_the_presets_blocks(presets: dict[str, str]) -> None:
    """Layer-wise decay 0.5 on a hub backbone: each of its blocks (the family's own groups, which
    its layers' names do not show) at half the rate of the block above it, the deepest at half the head's."""
    for name in presets.values():
        model = backbones.create(name, weights=None)
        scales = layer_scales(model, name, 0.5)
        groups = backbones.get(name).block_groups(model.layers[-1])
        per_block = [{scales[id(v)] for layer in layers for v in layer.weights} for _, layers in groups]
        assert len(groups) >= 3 and all(len(block) == 1 for block in per_block), (name, per_block)
        assert [block.pop() for block in per_block] == [0.5 ** (len(groups) - i) for i in range(len(groups))], name


def test_a_vit_fold_fine_tunes_by_block_and_grad_cam_reads_its_token_grid(presets, tmp_path: Path) -> None:
    images, y, _ = _corner_images(96, seed=0)
    cfg = make_config(models=[{"name": "vit", "backbone": presets["vit"], "regime": "finetune", "epochs": 2,
                               "head_epochs": 1, "unfreeze": "block_2", "batch_size": 16,
                               "lr": 0.003}])
    task = FoldTask(model=cfg.models[0], task="multiclass", metric="accuracy", y=y, n_classes=2,
                    train_index=np.arange(64), valid_index=np.arange(64, 96), augment=cfg.augment, caches={},
                    fold_dir=tmp_path, seed=0)
    fit_as_a_fold(task, images)
    result = explain(task, images[:6])
    assert result.heatmaps.shape == (6, SIZE, SIZE)
    # Each heatmap varies over the image (a 4x4 token grid upsampled), and they differ between images.
    assert all(h.max() - h.min() > 0.1 for h in result.heatmaps)
    assert np.abs(result.heatmaps[0] - result.heatmaps[1]).max() > 0.05


def test_a_cnn_fold_trains_partial_on_a_cut_block_and_grad_cam_reads_the_cut(presets, tmp_path: Path) -> None:
    images, y, _ = _corner_images(64, seed=0)
    cfg = make_config(models=[{"name": "cnn", "backbone": presets["resnet"], "regime": "partial", "cut_layer": "P2",
                               "dense_units": [8], "epochs": 1, "batch_size": 16}])
    task = FoldTask(model=cfg.models[0], task="multiclass", metric="accuracy", y=y, n_classes=2,
                    train_index=np.arange(48), valid_index=np.arange(48, 64), augment=cfg.augment, caches={},
                    fold_dir=tmp_path, seed=0)
    proba = fit_as_a_fold(task, images)("train", task.valid_index)
    assert proba.shape == (16, 2) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    result = explain(task, images[:3])
    assert result.heatmaps.shape == (3, SIZE, SIZE) and all(h.max() - h.min() > 0.1 for h in result.heatmaps)


def test_the_bundle_ships_the_preset_and_the_kernel_finds_it_where_the_folder_was(tmp_path: Path, monkeypatch) -> None:
    """Whatever its ``weights`` (the architecture is the preset's config), a hub backbone's preset
    files go to ``weights/hub/<key>/``; once the kernel has put them in its cache, the same
    ``hub:<path>`` resolves there although the path is gone."""
    monkeypatch.setenv("FOLDSTACK_CACHE", str(tmp_path / "cache"))
    name = f"hub:{save_resnet(tmp_path / 'models' / 'resnet')}"
    cfg = make_config(models=[{"name": "r", "backbone": name, "weights": "none", "regime": "scratch", "epochs": 1}])
    found = bundle._pretrained_weights(cfg, tmp_path / "weights")
    key = hub.cache_key(name)
    assert found[pretrained.HUB] == [f"{key}/{file}" for file in
                                     ("config.json", "image_converter.json", "metadata.json", "model.weights.h5")]
    shutil.move(tmp_path / "models", tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=r"no preset folder"):
        make_config(models=[{"name": "r", "backbone": name}])
    shutil.copytree(tmp_path / "weights" / pretrained.HUB, pretrained.cache_dir(pretrained.HUB))  # as the kernel does
    assert make_config(models=[{"name": "r", "backbone": name}]).models[0].image_size == SIZE
    assert backbones.create(name, weights="imagenet").count_params() > 0


PIPELINE = {
    "name": "tinyhub", "task": "multiclass", "metric": "accuracy",
    "data": {"source": {"type": "kaggle_competition", "competition": SLUG}},
    "folds": {"k": 2, "seed": 0},
    "stack": {"candidates": ["mean"]},
}


@pytest.mark.slow
def test_hub_folds_train_predict_bundle_and_run_in_the_offline_kernel(tmp_path: Path) -> None:
    """Both presets (the ViT fine-tuned by block, the ResNet's features cached) train, predict and
    bundle; the kernel stage predicts from the bundle alone: the preset folders are gone and
    neither Keras's nor foldstack's cache holds anything."""
    vit, resnet = save_vit(tmp_path / "presets" / "vit"), save_resnet(tmp_path / "presets" / "resnet")
    pipeline = {**PIPELINE, "models": [
        {"name": "vit", "backbone": f"hub:{vit}", "regime": "finetune", "epochs": 2, "head_epochs": 1,
         "unfreeze": "block_2", "batch_size": 32, "lr": 0.003},
        {"name": "resnet", "backbone": f"hub:{resnet}", "regime": "features", "epochs": 2, "batch_size": 32},
    ]}
    (tmp_path / "tinyhub.yaml").write_text(yaml.safe_dump(pipeline))
    competition(tmp_path / "input")
    trained = tmp_path / "trained"
    # Kaggle-like, as test_kernel_offline trains: the competition read from its input mount.
    env = {**os.environ, "KAGGLE_KERNEL_RUN_TYPE": "Batch", "FOLDSTACK_KAGGLE_INPUT": str(tmp_path / "input"),
           "FOLDSTACK_KAGGLE_WORKING": str(trained), "PYTHONUNBUFFERED": "1",
           "FOLDSTACK_CACHE": str(tmp_path / "cache-trained"), "KERAS_HOME": str(tmp_path / "keras-trained")}
    common = ["--pipeline", str(tmp_path / "tinyhub.yaml"), "--root", str(trained)]
    (tmp_path / "no-requirements.txt").write_text("")
    for stage in ("folds", "train", "predict", "stack", "bundle"):
        extra = ("--requirements", str(tmp_path / "no-requirements.txt")) if stage == "bundle" else ()
        foldstack(stage, *common, *extra, env=env)
    bundle = trained / "bundle" / "tinyhub"
    shipped = sorted(p.relative_to(bundle / "weights").as_posix() for p in (bundle / "weights").rglob("*") if p.is_file())
    assert any(p.startswith("hub/vit-") and p.endswith("/config.json") for p in shipped), shipped
    assert any(p.startswith("hub/resnet-") and p.endswith("/model.weights.h5") for p in shipped), shipped

    shutil.move(tmp_path / "presets", tmp_path / "elsewhere")  # the kernel has only the bundle
    working = tmp_path / "working"
    kernel_env = {**env, "FOLDSTACK_CACHE": str(tmp_path / "cache-kernel"), "KERAS_HOME": str(tmp_path / "keras-kernel"),
                  "FOLDSTACK_KAGGLE_WORKING": str(working)}
    foldstack("kernel", "--bundle", str(bundle), "--root", str(working), env=kernel_env)
    assert (working / "submission.csv").is_file()
    for model in ("vit", "resnet"):
        got = pd.read_parquet(working / "artifacts" / "tinyhub" / "test" / f"{model}.parquet").set_index("id")
        expected = pd.read_parquet(trained / "artifacts" / "tinyhub" / "test" / f"{model}.parquet").set_index("id")
        np.testing.assert_allclose(got.loc[expected.index].to_numpy(), expected.to_numpy(), rtol=0, atol=1e-5)
