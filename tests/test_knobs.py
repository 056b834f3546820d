"""The training knobs winners turn: optimizer, schedule, layer decay, drop path, loss, sampler,
pooling, metrics from the YAML, and their refusals (README "Recipes")."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from foldstack import backbones
from foldstack.core import metrics
from foldstack.core.config import ConfigError, ScheduleConfig
from foldstack.pipeline import load_pipeline
from foldstack.training.fold_task import FoldTask
from foldstack.training.losses import create_loss
from foldstack.training.network import build_network, compile_for, create_backbone
from foldstack.training.optim import create_optimizer, create_schedule, layer_scales, phase_recipe
from foldstack.training.sampling import sampler

from conftest import TINY, make_config


def _model(**fields) -> dict:
    return {**TINY["models"][0], "backbone": "small_cnn", "image_size": 16, "dropout": 0.0, **fields}


def _task(tmp_path: Path, task: str = "multiclass", **fields) -> FoldTask:
    cfg = make_config(task=task, models=[_model(**fields)])
    return FoldTask(model=cfg.models[0], task=cfg.task, metric=cfg.metric, y=np.zeros(4, dtype=int), n_classes=3,
                    train_index=np.arange(2), valid_index=np.arange(2, 4), augment=cfg.augment, caches={},
                    fold_dir=tmp_path, seed=0)


def _one_step(task: FoldTask, lr_scales_from_decay: float | None) -> tuple[list, list]:
    """Weights before and after one SGD step (no momentum, no decay, constant rate)."""
    keras.utils.set_random_seed(0)
    backbone = create_backbone(task.model)
    network = build_network(task, backbone, frozen_statistics=True)
    recipe = phase_recipe(task.model, "all")
    scales = layer_scales(backbone, task.model.backbone, lr_scales_from_decay)
    compile_for(task, network, 0.1, 1, 1, recipe=recipe, lr_scales=scales)
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    y = np.eye(3, dtype="float32")[[0, 1, 2, 0]]
    before = [keras.ops.convert_to_numpy(v) for v in network.trainable_variables]
    network.train_on_batch(x, y)
    after = [keras.ops.convert_to_numpy(v) for v in network.trainable_variables]
    names = [v.path for v in network.trainable_variables]
    return names, [a - b for a, b in zip(after, before)]


def test_layer_decay_scales_each_block_from_the_head_down(tmp_path: Path) -> None:
    """small_cnn has three blocks: with decay 0.5 the head steps as before, block 3 at half,
    block 2 at a quarter, block 1 at an eighth (an SGD step is linear in its rate)."""
    fields = {"optimizer": {"type": "sgd", "momentum": 0.0}, "weight_decay": 0.0,
              "schedule": {"type": "constant", "warmup_epochs": 0}}
    names, plain = _one_step(_task(tmp_path, **fields), None)
    _, decayed = _one_step(_task(tmp_path, **fields, layer_decay=0.5), 0.5)
    expected = {"block1": 0.125, "block2": 0.25, "block3": 0.5}
    for name, a, b in zip(names, plain, decayed):
        block = next((key for key in expected if key in name), None)
        ratio = expected.get(block, 1.0)
        assert np.allclose(b, ratio * a, rtol=1e-3, atol=1e-7), (name, ratio)
    assert sum(1 for name in names if any(key in name for key in expected)) >= 6


@pytest.mark.parametrize("name", ["small_cnn", "efficientnet_lite0", "efficientnet_b0", "mobilenet_v2",
                                  "mobilenet_v3_small", "resnet50", "inception_v3"])
def test_blocks_grow_from_the_stem(name: str) -> None:
    """The registry says how a backbone's layers group into blocks (keras.applications,
    EfficientNet-Lite and small_cnn alike): several, growing with depth, from the stem's 0."""
    spec = backbones.get(name)
    size = max(32, spec.min_size)
    blocks = spec.blocks([layer.name for layer in spec.build((size, size, 3), None).layers])
    assert blocks == sorted(blocks) and blocks[0] == 0, name
    assert len(set(blocks)) >= 3, (name, len(set(blocks)))
    keras.backend.clear_session()


@pytest.mark.parametrize("kind", ["adamw", "sgd", "lion"])
def test_every_optimizer_keeps_the_warmed_up_average(tmp_path: Path, kind: str) -> None:
    task = _task(tmp_path, optimizer={"type": kind}, ema={"decay": 0.999})
    variable = keras.Variable(np.ones(3, dtype="float32"))
    optimizer = create_optimizer(task.model, phase_recipe(task.model, "all"), 0.1, 1, 10)
    assert type(optimizer).__name__.lower() == kind
    optimizer.build([variable])
    optimizer.apply([keras.ops.ones(3)], [variable])
    average = keras.ops.convert_to_numpy(optimizer._model_variables_moving_average[0])
    now = keras.ops.convert_to_numpy(variable)
    # The first step's momentum is 1/10 (not 0.999): the average moved most of the way.
    assert not np.allclose(now, 1.0)
    assert np.allclose(average, 0.1 * 1.0 + 0.9 * now, atol=1e-6)


def test_schedules_shape_the_rate() -> None:
    steps, epochs, lr = 10, 10, 1.0

    def rates(**spec):
        schedule = create_schedule(ScheduleConfig(**spec), lr, epochs, steps)
        return np.array([float(schedule(step)) for step in range(epochs * steps)])

    onecycle = rates(type="onecycle", pct_start=0.3)
    assert np.isclose(onecycle[0], lr / 25) and np.isclose(onecycle.max(), lr, rtol=1e-2)
    assert 25 <= onecycle.argmax() <= 31 and onecycle[-1] < lr / 100
    step = rates(type="step", warmup_epochs=0, step_epochs=3, gamma=0.1)
    assert np.allclose(step[[0, 29, 30, 59, 60]], [1, 1, 0.1, 0.1, 0.01])
    constant = rates(type="constant", warmup_epochs=1)
    assert constant[0] < 0.05 and np.allclose(constant[10:], lr)
    cosine = rates(type="cosine", warmup_epochs=2)
    assert cosine.argmax() == 20 and cosine[-1] < 0.05


def test_phases_set_their_own_recipe(tmp_path: Path) -> None:
    task = _task(tmp_path, regime="finetune", optimizer={"type": "sgd"}, layer_decay=0.8,
                 phases={"unfrozen": {"optimizer": {"type": "lion"}, "layer_decay": 0.6}})
    head, unfrozen = phase_recipe(task.model, "head"), phase_recipe(task.model, "unfrozen")
    assert (head.optimizer.type, head.layer_decay) == ("sgd", 0.8)
    assert (unfrozen.optimizer.type, unfrozen.layer_decay) == ("lion", 0.6)


def test_drop_path_sets_the_backbone_rate() -> None:
    def rates(drop_path):
        model = backbones.create("efficientnet_lite0", weights="none", input_shape=(32, 32, 3), drop_path=drop_path)
        inner = model.layers[-1]
        return [layer.rate for layer in inner.layers if layer.name.endswith("drop")]

    default, more = rates(None), rates(0.5)
    assert default and max(more) > 0.4 and max(default) < 0.2
    keras.backend.clear_session()


def test_focal_and_poly1_losses() -> None:
    y = np.eye(3, dtype="float32")[[0, 1]]
    p = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1]], dtype="float32")
    focal = create_loss(make_config(models=[_model(loss={"type": "focal", "gamma": 2.0, "alpha": 0.25})]).models[0],
                        "multiclass")
    assert isinstance(focal, keras.losses.CategoricalFocalCrossentropy)
    expected = np.mean([-0.25 * (1 - q) ** 2 * np.log(q) for q in (0.7, 0.6)])
    assert np.isclose(float(focal(y, p)), expected, rtol=1e-4)
    poly = create_loss(make_config(models=[_model(loss={"type": "poly1", "epsilon": 2.0})]).models[0], "multiclass")
    assert np.isclose(float(poly(y, p)), np.mean([-np.log(q) + 2.0 * (1 - q) for q in (0.7, 0.6)]), rtol=1e-4)
    bce = create_loss(make_config(models=[_model(loss={"type": "bce"})]).models[0], "multiclass")
    assert isinstance(bce, keras.losses.BinaryCrossentropy)
    multilabel = create_loss(make_config(task="multilabel", models=[_model(loss={"type": "focal"})]).models[0],
                             "multilabel")
    assert isinstance(multilabel, keras.losses.BinaryFocalCrossentropy)


def test_samplers_draw_anew_every_epoch() -> None:
    targets = np.eye(2, dtype="float32")[np.r_[np.zeros(90, int), np.ones(10, int)]]
    index = np.arange(0, 100, 2)  # 45 negatives, 5 positives train; the other rows are the held-out fold
    rng = np.random.default_rng(0)
    balanced = sampler(make_config(models=[_model(sampler={"balance": "classes"})]).models[0].sampler, index, targets)
    first, second = balanced.draw(rng), balanced.draw(rng)
    assert len(first) == len(index) and set(first) <= set(index)
    assert abs(targets[first, 1].sum() - 25) <= 1 and not np.array_equal(first, second)
    cfg = make_config(task="binary", models=[_model(sampler={"balance": {"negatives_per_positive": 2}})])
    few = sampler(cfg.models[0].sampler, index, targets)
    draws = [few.draw(rng) for _ in range(2)]
    assert all(len(d) == few.size == 15 and targets[d, 1].sum() == 5 for d in draws)
    assert set(draws[0]) != set(draws[1]) and all(set(d) <= set(index) for d in draws)


@pytest.mark.parametrize("pooling, width", [("avg", 128), ("gem", 128), ("max", 128), ("avgmax", 256)])
def test_pooling_and_an_extra_dense_layer(tmp_path: Path, pooling: str, width: int) -> None:
    task = _task(tmp_path, regime="scratch", pooling=pooling, head_dense=[8], dropout=0.3)
    network = build_network(task, create_backbone(task.model), frozen_statistics=False,
                            dense_units=task.model.head_units)
    pooled = network.get_layer("pooled")
    assert pooled.output.shape[-1] == width
    kinds = [type(layer).__name__ for layer in network.layers]
    assert kinds[-3:] == ["Dense", "Dropout", "Dense"], kinds  # the extra dense layer, its dropout, the classifier
    if pooling == "gem":
        assert [w.path.split("/")[-1] for w in pooled.trainable_weights] == ["p"]
        x = np.random.default_rng(0).uniform(0, 1, (2, 4, 4, 5)).astype("float32")
        assert np.allclose(keras.ops.convert_to_numpy(pooled(x)), np.mean(x ** 3, axis=(1, 2)) ** (1 / 3), rtol=1e-4)
    keras.backend.clear_session()


def test_partial_auc_is_the_area_above_the_tpr() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    score = y * 0.8 + rng.normal(0, 0.6, 400)
    proba = np.c_[1 - score, score]
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, score)
    grid = np.linspace(0, 1, 200_001)
    expected = np.trapezoid(np.maximum(np.interp(grid, fpr, tpr) - 0.8, 0), grid)
    got = metrics.get("pauc_80")(y, proba)
    assert np.isclose(got, expected, atol=1e-4) and 0 < got < 0.2
    assert np.isclose(metrics.get("pauc_80")(y, np.c_[1 - y, y]), 0.2)


def test_balanced_accuracy_and_macro_f1() -> None:
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    proba = rng.dirichlet(np.ones(4), 300)
    assert np.isclose(metrics.get("balanced_accuracy")(y, proba), balanced_accuracy_score(y, proba.argmax(1)))
    assert np.isclose(metrics.get("f1_macro")(y, proba), f1_score(y, proba.argmax(1), average="macro"))


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_metric_callable_is_registered_at_load(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "my_scores.py").write_text(
        "import numpy as np\n"
        "def wrong_share(y_true, labels):\n    return float(np.mean(np.asarray(y_true) != labels))\n"
        "def words(y_true, proba):\n    return 'high'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = {**copy.deepcopy(TINY), "metric": {"callable": "my_scores:wrong_share", "greater_is_better": False,
                                             "needs": "labels"}}
    cfg = load_pipeline(_write(tmp_path, raw))
    metric = metrics.get(cfg.metric)
    assert not metric.greater_is_better and metric.better(0.1, 0.2)
    assert metric(np.array([0, 1, 2]), np.eye(3)[[0, 2, 2]]) == pytest.approx(1 / 3)
    words = load_pipeline(_write(tmp_path, {**raw, "metric": {"callable": "my_scores:words"}}))
    with pytest.raises(Exception, match=r"metric my_scores:words: returned 'high', not a number"):
        metrics.get(words.metric)(np.array([0, 1]), np.eye(2))
    sys.modules.pop("my_scores", None)


def _pipeline(task: str = "multiclass", **fields) -> dict:
    return {**copy.deepcopy(TINY), "task": task, "models": [_model(**fields)]}


#: Each refusal: the pipeline refused, the key its line starts with, and what it says.
REFUSED = {
    "unknown optimizer": (_pipeline(optimizer={"type": "adam"}), "models.0.optimizer.type", "'adamw', 'sgd' or 'lion'"),
    "unknown schedule": (_pipeline(schedule={"type": "linear"}), "models.0.schedule.type", "'onecycle'"),
    "unknown loss": (_pipeline(loss={"type": "hinge"}), "models.0.loss.type", "must be one of 'focal'"),
    "label_smoothing beside a loss": (_pipeline(label_smoothing=0.1, loss={"type": "poly1"}), "models.0.loss",
                                      "move label_smoothing (0.1) under loss"),
    "label_smoothing beside focal": (_pipeline(label_smoothing=0.1, loss={"type": "focal"}), "models.0.loss",
                                     "'focal' has no label smoothing: drop label_smoothing (0.1)"),
    "unknown sampler": (_pipeline(sampler={"balance": "labels"}), "models.0.sampler.balance", "'classes'"),
    "unknown pooling": (_pipeline(pooling="median"), "models.0.pooling", "'gem'"),
    "unknown averaging": (_pipeline(average={"method": "ema"}), "models.0.average.method", "'greedy_soup'"),
    "layer_decay 0": (_pipeline(layer_decay=0), "models.0.layer_decay = 0", "greater than 0"),
    "layer_decay above 1": (_pipeline(layer_decay=1.5), "models.0.layer_decay = 1.5", "less than or equal to 1"),
    "drop_path without it": (_pipeline(drop_path=0.2), "models.0.drop_path", "'small_cnn' has no stochastic depth"),
    "sampler on multilabel": (_pipeline("multilabel", sampler={"balance": "classes"}), "models",
                              "cannot balance a multilabel"),
    "negatives on multiclass": (_pipeline(sampler={"balance": {"negatives_per_positive": 3}}), "models",
                                "needs task 'binary'"),
    "head_dense on partial": (_pipeline(regime="partial", head_dense=[16]), "models.0.head_dense", "dense_units"),
    "gem on features": (_pipeline(regime="features", pooling="gem"), "models.0.pooling", "not 'features'"),
    "metric not importable": ({**copy.deepcopy(TINY), "metric": {"callable": "no_such_pkg.scores:auc"}}, "metric",
                              "metric callable 'no_such_pkg.scores:auc' cannot be imported"),
    "metric callable as a bare string": ({**copy.deepcopy(TINY), "metric": "my_scores:wrong_share"}, "metric",
                                         "unknown metric; known:"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_knob_refusals_name_the_key(tmp_path: Path, name: str) -> None:
    raw, key, said = REFUSED[name]
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError) as error:
        load_pipeline(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {key}") and "\n" not in message, message
    assert said in message, message


def test_a_sampled_fold_sees_a_new_balanced_draw_each_epoch(tiny_digits, tmp_path: Path) -> None:
    """The training batches of a fold with ``sampler: {balance: classes}``: each epoch every
    class about equally often, drawn from the fold's training rows only, another draw the next
    epoch; the validation rows are never sampled."""
    from foldstack.training.regimes import train_batches

    from test_train import fold_task, model_config

    task, images = fold_task(tiny_digits, tmp_path, model_config(regime="scratch", sampler={"balance": "classes"}))
    # Skew the fold: most training rows of class 0 dropped, so only a sampler balances it.
    keep = task.train_index[(task.y[task.train_index] != 0) | (np.arange(len(task.train_index)) % 5 == 0)]
    from dataclasses import replace

    task = replace(task, train_index=keep)
    batches = train_batches(task, images)
    epochs, orders = [], []
    for _ in range(2):
        epochs.append(sum(batches[b][1].sum(axis=0) for b in range(len(batches))))
        orders.append(batches._order.copy())
        batches.on_epoch_end()
    for counts in epochs:
        # Each class drawn len(keep) // 10 times (one more for the remainder's classes).
        assert counts.sum() == len(keep) and counts.max() - counts.min() <= 1, counts
    assert set(np.unique(orders[0])) != set(np.unique(orders[1])) or not np.array_equal(orders[0], orders[1])
    assert all(set(order) <= set(keep) and not set(order) & set(task.valid_index) for order in orders)
