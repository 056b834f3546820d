"""The training recipes, each shown to do what it says: MixUp and CutMix mix a batch's images and
targets alike; the EMA weights are the ones validated and checkpointed; progressive resizing
trains each phase on its own size and keeps the best checkpoint across sizes; seed bagging
trains each fold once per seed, averages them and skips the runs already finished."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import keras
import numpy as np
import pandas as pd
import pytest

from foldstack.core import metrics
from foldstack.core.config import CutMixConfig, MixUpConfig
from foldstack.core.metrics import Metric
from foldstack.core.paths import Paths
from foldstack.data.cache import cached_images
from foldstack.stages import download, predict, train
from foldstack.stages import folds as folds_stage
from foldstack.training import loader, regimes
from foldstack.training.batch_mix import BatchMix
from foldstack.training.callbacks import EPOCH_ATTR, SCORE_ATTR
from foldstack.training.fold_task import FoldTask
from foldstack.training.loader import ImageBatches, view_batches
from foldstack.training.phases import BEST

from conftest import make_config
from test_device_mix import mix_batch
from test_train import MODEL, fold_task, model_config

CLASSES = [str(d) for d in range(10)]


# --- MixUp and CutMix ------------------------------------------------------------------------------

def flat_batch(n: int = 8, size: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` images, each one flat grey level of its own, with one-hot targets of distinct classes:
    in a mixed image every pixel tells which images it came from."""
    levels = np.arange(n) * 30 + 5
    images = np.broadcast_to(levels[:, None, None, None], (n, size, size, 3)).astype(np.uint8)
    return images, np.eye(10, dtype=np.float32)[:n], levels.astype(np.float64)


def partners(targets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """From mixed targets of classes 0..n-1: each row's own weight and the row it was mixed with."""
    own = targets[np.arange(n), np.arange(n)]
    other = targets[:, :n].copy()
    other[np.arange(n), np.arange(n)] = -1
    partner = np.where(own < 1 - 1e-6, other.argmax(axis=1), np.arange(n))
    return own, partner


def test_mixup_blends_images_and_targets_with_the_same_weight() -> None:
    images, targets, levels = flat_batch()
    mixed, mixed_targets = mix_batch(images, targets, MixUpConfig(alpha=0.4, p=1.0), None, np.random.default_rng(3))
    own, partner = partners(mixed_targets, len(images))
    assert (partner != np.arange(len(images))).sum() >= 4 and ((own > 0.01) & (own < 0.99)).sum() >= 4
    np.testing.assert_allclose(mixed_targets.sum(axis=1), 1.0, rtol=1e-6)
    assert ((mixed_targets >= 0) & (mixed_targets <= 1)).all()
    expected = own * levels + (1 - own) * levels[partner]
    np.testing.assert_allclose(mixed, np.broadcast_to(expected[:, None, None, None], mixed.shape), atol=1e-3)


def test_cutmix_pastes_a_box_and_weighs_targets_by_its_area() -> None:
    images, targets, levels = flat_batch()
    mixed, mixed_targets = mix_batch(images, targets, None, CutMixConfig(alpha=1.0, p=1.0), np.random.default_rng(5))
    own, partner = partners(mixed_targets, len(images))
    np.testing.assert_allclose(mixed_targets.sum(axis=1), 1.0, rtol=1e-6)
    pasted_any = 0
    for i in range(len(images)):
        pasted = mixed[i, :, :, 0] != levels[i]
        assert (mixed[i][pasted] == levels[partner[i]]).all()  # pixels come from the partner only
        if pasted.any():
            pasted_any += 1
            rows, cols = np.flatnonzero(pasted.any(axis=1)), np.flatnonzero(pasted.any(axis=0))
            assert pasted.sum() == len(rows) * len(cols)  # one box
        np.testing.assert_allclose(1 - own[i], pasted.mean(), atol=1e-6)  # the target weight is the area
    assert pasted_any >= 4


def test_mixing_is_seeded_shared_by_probability_and_off_leaves_batches_alone() -> None:
    images, targets, _ = flat_batch()
    mixup, cutmix = MixUpConfig(alpha=0.4, p=0.3), CutMixConfig(alpha=1.0, p=0.3)
    first = mix_batch(images, targets, mixup, cutmix, np.random.default_rng(11))
    again = mix_batch(images, targets, mixup, cutmix, np.random.default_rng(11))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)

    kinds = []
    for seed in range(60):
        mixed, _ = mix_batch(images, targets, mixup, cutmix, np.random.default_rng(seed))
        pixels = mixed[:, :, :, 0]
        untouched = (pixels == images[:, :, :, 0]).all()
        blended = not np.isin(pixels, images[:, 0, 0, 0]).all()  # MixUp makes new grey levels
        kinds.append("none" if untouched else "mixup" if blended else "cutmix")
    counts = {kind: kinds.count(kind) for kind in ("none", "mixup", "cutmix")}
    assert all(8 <= count <= 32 for count in counts.values()), counts

    out = mix_batch(images, targets, None, None, np.random.default_rng(0))
    assert out[0] is images and out[1] is targets
    assert BatchMix.of(model_config()) is None


def test_only_training_batches_are_mixed(tiny_digits, tmp_path: Path) -> None:
    task, images = fold_task(tiny_digits, tmp_path, model_config(regime="scratch", mixup={"alpha": 0.4, "p": 1.0}))
    batches = regimes.train_batches(task, images)
    x, y = batches[0]
    assert x.dtype == np.float32 and not np.isin(y, (0.0, 1.0)).all()
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)
    x_again, y_again = regimes.train_batches(task, images)[0]
    np.testing.assert_array_equal(x, x_again)
    np.testing.assert_array_equal(y, y_again)
    (valid,) = view_batches(images["train"], task.valid_index, task.augment, [], 32)[0]
    np.testing.assert_array_equal(valid, images["train"][task.valid_index[:32]])


# --- EMA and progressive resizing: one fold, watched from inside fit ----------------------------------

class Watch(keras.callbacks.Callback):
    """Per epoch: the raw weights and the optimizer's EMA at its last batch, and the network's
    weights at its end (after every other callback)."""

    def __init__(self):
        super().__init__()
        self.raw, self.ema, self.at_end = {}, {}, {}
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        optimizer = self.model.optimizer
        self.raw[self.epoch] = [keras.ops.convert_to_numpy(v) for v in optimizer._trainable_variables]
        self.ema[self.epoch] = [keras.ops.convert_to_numpy(v) for v in optimizer._model_variables_moving_average]

    def on_epoch_end(self, epoch, logs=None):
        self.at_end[epoch] = [keras.ops.convert_to_numpy(v) for v in self.model.trainable_variables]


@pytest.fixture(scope="module")
def ema_progressive(tiny_digits, tmp_path_factory):
    """A scratch fold of two epochs, the first at 12 px and the second at 16, with an EMA of
    decay 0.5; the validation scores are scripted (0.9 then 0.5, so the 12 px epoch is best) and
    the probabilities they were given recorded; every batch the loader serves is recorded."""
    tmp_path = tmp_path_factory.mktemp("ema")
    model = model_config(regime="scratch", epochs=2, patience=2, lr=0.01, ema={"decay": 0.5},
                         progressive=[{"size": 12, "epochs": 1}])
    task, images = fold_task(tiny_digits, tmp_path, model)
    images["train-12"] = np.random.default_rng(1).integers(0, 255, (len(images["train"]), 12, 12, 3), dtype=np.uint8)
    scores, seen = [0.9, 0.5], []
    metric = Metric("scripted", lambda y, proba: (seen.append(np.array(proba)), scores[len(seen) - 1])[1],
                    greater_is_better=True)
    served = []
    real = ImageBatches.__getitem__

    def record(self, batch):
        out = real(self, batch)
        served.append(("train" if len(out) == 2 else "valid", out[0].shape[1:3]))
        return out

    watch = Watch()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loader.ImageBatches, "__getitem__", record)
        regimes.fit(task, images, metric, callbacks=[watch])
    return task, images, watch, seen, served


def _best(task) -> tuple[keras.Model, float, int]:
    network, _ = regimes.image_network(task)
    network.load_weights(str(task.fold_dir / BEST))
    with h5py.File(task.fold_dir / BEST, "r") as handle:
        return network, float(handle.attrs[SCORE_ATTR]), int(handle.attrs[EPOCH_ATTR])


def test_ema_weights_are_validated_and_checkpointed(ema_progressive) -> None:
    task, images, watch, seen, _ = ema_progressive
    for epoch in (0, 1):
        for at_end, ema, raw in zip(watch.at_end[epoch], watch.ema[epoch], watch.raw[epoch]):
            np.testing.assert_array_equal(at_end, ema)  # what the callbacks saw at the epoch's end
    assert any(not np.allclose(e, r) for e, r in zip(watch.ema[0], watch.raw[0]))

    network, score, epoch = _best(task)
    assert (score, epoch) == (pytest.approx(0.9), 0)
    for saved, ema in zip(network.trainable_variables, watch.ema[0]):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(saved), ema)
    valid = view_batches(images["train"], task.valid_index, task.augment, [], 32)
    np.testing.assert_allclose(seen[0], network.predict(valid, verbose=0), rtol=1e-5, atol=1e-6)
    for variable, raw in zip(network.trainable_variables, watch.raw[0]):
        variable.assign(raw)
    assert not np.allclose(seen[0], network.predict(valid, verbose=0), rtol=0, atol=1e-4)


def test_progressive_phases_train_on_each_size_and_keep_the_best_across_sizes(ema_progressive) -> None:
    task, images, watch, seen, served = ema_progressive
    train_sizes = [size for kind, size in served if kind == "train"]
    steps = -(-len(task.train_index) // task.model.batch_size)
    small = train_sizes.count((12, 12))
    assert small >= steps and train_sizes == [(12, 12)] * small + [(16, 16)] * (len(train_sizes) - small)
    assert len(train_sizes) - small >= steps  # (Keras reads a batch more to learn the input's shape)
    assert {size for kind, size in served if kind == "valid"} == {(16, 16)}  # validation at image_size
    assert sorted(p.name for p in task.fold_dir.glob("phase-*")) == ["phase-all-12px.weights.h5",
                                                                      "phase-all.weights.h5"]
    assert pd.read_csv(task.fold_dir / "log.csv")["epoch"].tolist() == [0, 1]
    assert len(seen) == 2  # both epochs were scored
    # The 12 px epoch scored best: its weights stay the best and predict at 16 px.
    network, score, epoch = _best(task)
    assert (score, epoch) == (pytest.approx(0.9), 0)
    assert any(not np.allclose(a, b) for a, b in zip(watch.at_end[0], watch.at_end[1]))
    proba = network.predict(images["test"][:4], verbose=0)
    assert proba.shape == (4, 10)


# --- EMA on real digits: warm-up, and the average carried from phase to phase ----------------------

#: How far below the plain fold's accuracy an EMA fold may end (120 held-out digits: 0.05 is six
#: of them). Measured: plain 0.942, EMA 0.925; Keras's EMA without warm-up ends at 0.100 (chance).
EMA_MARGIN = 0.05


class FirstSteps(keras.callbacks.Callback):
    """Per ``fit`` call (one per phase): the weights it starts from, then after its first step the
    raw weights and the optimizer's average."""

    def __init__(self):
        super().__init__()
        self.fits: list[dict[str, list[np.ndarray]]] = []

    def on_train_begin(self, logs=None):
        self.fits.append({"start": [keras.ops.convert_to_numpy(v) for v in self.model.trainable_variables]})

    def on_train_batch_end(self, batch, logs=None):
        if "average" not in self.fits[-1]:
            optimizer = self.model.optimizer
            self.fits[-1]["raw"] = [keras.ops.convert_to_numpy(v) for v in optimizer._trainable_variables]
            self.fits[-1]["average"] = [keras.ops.convert_to_numpy(v)
                                        for v in optimizer._model_variables_moving_average]


@pytest.fixture(scope="module")
def digits_ema(tmp_path_factory):
    """Fold 0 of 3 of 450 real digits (240 training rows, 15 steps an epoch), fine-tuned twice
    from the same seed, plain and with an EMA of the default decay (0.999): one head epoch, then
    three unfrozen. Returns the fold of each (its task, its held-out accuracy) and the EMA fold's
    :class:`FirstSteps`."""
    root = tmp_path_factory.mktemp("digits-ema")
    cfg = make_config(data={"source": {"type": "embedded", "dataset": "digits", "limit": 450},
                            "solution": "solution.csv"}, folds={"k": 3, "seed": 0})
    paths = Paths.for_pipeline("tiny", root)
    download.run(cfg, paths)
    folds_stage.run(cfg, paths)
    trainer = train.Trainer(cfg, paths, workers=1)
    cache = root / "train-16.npy"
    cached_images(trainer.files, trainer.folds["id"].tolist(), 16, cache)
    images = {"train": np.load(cache, mmap_mode="r")}
    fold = trainer.folds["fold"].to_numpy()
    accuracy = metrics.get("accuracy")
    runs, steps = {}, FirstSteps()
    for name, ema in (("plain", None), ("ema", {})):
        model = model_config(regime="finetune", epochs=4, head_epochs=1, patience=4, lr=0.01, finetune_lr=0.003,
                             batch_size=16, ema=ema)
        task = FoldTask(model=model, task=cfg.task, metric=cfg.metric, y=trainer.y, n_classes=10,
                        train_index=np.flatnonzero(fold != 0), valid_index=np.flatnonzero(fold == 0),
                        augment=cfg.augment, caches={"train": cache}, fold_dir=root / name, seed=0)
        task.fold_dir.mkdir()
        keras.utils.set_random_seed(0)
        predict = regimes.fit(task, images, accuracy, callbacks=[steps] if ema is not None else [])
        runs[name] = task, accuracy(trainer.y[task.valid_index], predict("train", task.valid_index))
    return runs, steps


def test_ema_fold_reaches_the_plain_folds_accuracy(digits_ema) -> None:
    runs, _ = digits_ema
    (plain, plain_accuracy), (ema, ema_accuracy) = runs["plain"], runs["ema"]
    assert ema.model.ema.decay == 0.999 and plain.model.ema is None
    assert plain_accuracy > 0.8  # the recipe learns the digits: the comparison means something
    assert ema_accuracy >= plain_accuracy - EMA_MARGIN, (ema_accuracy, plain_accuracy)


def test_ema_warms_up_and_carries_the_average_into_the_next_phase(digits_ema) -> None:
    """The first step of each phase: average = d * start + (1 - d) * raw, with
    d = min(0.999, (1 + t) / (10 + t)) at the fold's step t (0, then one epoch's 15 steps): the
    unfrozen phase's average goes on from the head phase's (the weights it starts from), not
    from its own first step."""
    runs, steps = digits_ema
    task, _ = runs["ema"]
    assert len(steps.fits) == 2  # head, unfrozen
    per_epoch = -(-len(task.train_index) // task.model.batch_size)
    for fit, t in zip(steps.fits, (0, per_epoch)):
        d = min(0.999, (1 + t) / (10 + t))
        moved = 0
        for start, raw, average in zip(fit["start"], fit["raw"], fit["average"]):
            np.testing.assert_allclose(average, d * start + (1 - d) * raw, rtol=1e-4, atol=1e-6)
            moved += not np.allclose(start, raw)
        assert moved  # the step changed weights, so the average's mix is seen


# --- seed bagging: the stages ---------------------------------------------------------------------

def _weights(path: Path) -> list[np.ndarray]:
    found = []
    with h5py.File(path, "r") as handle:
        handle["layers"].visititems(lambda name, item: found.append(item[()]) if isinstance(item, h5py.Dataset)
                                    else None)
    return found


def test_seed_bagging_averages_its_seeds_and_skips_finished_runs(tiny_digits, tmp_path: Path, capsys) -> None:
    cfg, source = tiny_digits
    paths = Paths.for_pipeline("tiny", tmp_path)
    shutil.copytree(source.root, paths.root, dirs_exist_ok=True)
    model = {**MODEL, "regime": "features", "epochs": 1}
    bagged = make_config(models=[{**model, "seeds": [cfg.seed, 7]}])
    train.run(bagged, paths, workers=1)

    models = paths.models / "m"
    # The pipeline seed's runs sit where a model without seeds puts its folds.
    runs = {(fold, seed): models / (f"fold{fold}" if seed == cfg.seed else f"fold{fold}-seed{seed}")
            for fold in (0, 1) for seed in (cfg.seed, 7)}
    assert all((folder / "done.json").is_file() for folder in runs.values())
    assert any(not np.array_equal(a, b) for a, b in zip(_weights(runs[0, cfg.seed] / BEST), _weights(runs[0, 7] / BEST)))

    oof = pd.read_parquet(paths.oof / "m.parquet").set_index("id")
    own = {run: pd.read_parquet(folder / "oof.parquet").set_index("id") for run, folder in runs.items()}
    for fold in (0, 1):
        rows = own[fold, cfg.seed].index
        assert (oof.loc[rows, "fold"] == fold).all()
        mean = (own[fold, cfg.seed][CLASSES] + own[fold, 7].loc[rows, CLASSES]) / 2
        np.testing.assert_allclose(oof.loc[rows, CLASSES].to_numpy(), mean.to_numpy(), rtol=1e-12)

    manifest = json.loads((models / "manifest.json").read_text())
    folds = pd.read_csv(paths.folds, dtype={"id": str}).set_index("id")
    y = folds.loc[oof.index, "label"].astype(int).to_numpy()
    accuracy = metrics.get("accuracy")
    assert manifest["cv_score"] == pytest.approx(accuracy(y, oof[CLASSES].to_numpy()))
    seed_scores = {}
    for seed in (cfg.seed, 7):
        seed_oof = pd.concat([own[0, seed], own[1, seed]]).loc[oof.index, CLASSES].to_numpy()
        record = manifest["seed_runs"][str(seed)]
        seed_scores[seed] = record["cv_score"]
        assert record["cv_score"] == pytest.approx(accuracy(y, seed_oof))
        assert [fold["fold"] for fold in record["folds"]] == [0, 1]

    capsys.readouterr()
    train.run(bagged, paths, workers=1)
    out = capsys.readouterr().out
    assert out.count("skip m fold") == 4 and "seed 7: already trained" in out  # every (fold, seed) finished

    # Without seeds, the model is the pipeline seed's runs alone: nothing trains again.
    single = make_config(models=[model])
    train.run(single, paths, workers=1)
    out = capsys.readouterr().out
    assert "skip m fold 0" in out and "skip m fold 1" in out and "seed" not in out
    assert json.loads((models / "manifest.json").read_text())["cv_score"] == pytest.approx(seed_scores[cfg.seed])

    # The predict stage runs every (fold, seed), fold by fold, and averages them all.
    assert predict.Predictor(bagged, paths).fold_dirs(bagged.models[0]) == tuple(runs[fold, seed] for fold in (0, 1)
                                                                                   for seed in (cfg.seed, 7))
