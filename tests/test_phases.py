"""What the phases of a fold really do, watched from inside ``fit``: which epoch's weights the best
checkpoint keeps across phases and a resume, which weights each regime trains, and that the train
stage's OOF files and the predict stage's test files are made of the right fold models and TTA views."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import keras
import numpy as np
import pandas as pd
import pytest

from foldstack.core import metrics
from foldstack.core.metrics import Metric
from foldstack.core.paths import Paths
from foldstack.runtime import isolate
from foldstack.stages import predict, train
from foldstack.training import regimes
from foldstack.training.callbacks import EPOCH_ATTR, SCORE_ATTR, AtomicBackupAndRestore, load_weights
from foldstack.training.features import FeatureCache
from foldstack.training.loader import view_batches
from foldstack.training.phases import BEST
from foldstack.training.worker import open_caches

from conftest import make_config
from test_train import MODEL, fold_task, model_config

CLASSES = [str(d) for d in range(10)]


class Spy(keras.callbacks.Callback):
    """Records the network's weights around every ``fit`` and epoch; raises KeyboardInterrupt at
    the start of epoch ``interrupt_at``. The caller's callbacks come last, so it sees every epoch
    after its checkpoint and backup."""

    def __init__(self, interrupt_at: int | None = None):
        super().__init__()
        self.interrupt_at = interrupt_at
        self.fits: list[dict[str, list[np.ndarray]]] = []  # per fit call: weights at its begin and end
        self.epoch_begins: list[tuple[int, list[np.ndarray]]] = []
        self.epoch_ends: dict[int, list[np.ndarray]] = {}

    def on_train_begin(self, logs=None):
        self.fits.append({"begin": self.model.get_weights()})

    def on_train_end(self, logs=None):
        self.fits[-1]["end"] = self.model.get_weights()

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.interrupt_at:
            raise KeyboardInterrupt
        self.epoch_begins.append((epoch, self.model.get_weights()))

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_ends[epoch] = self.model.get_weights()


def scripted(scores: list[float]) -> tuple[Metric, list[float]]:
    """A metric that returns ``scores`` in turn, one per call (one per epoch), then 0; and the
    list of scores still unused."""
    left = list(scores)
    return Metric("scripted", lambda y_true, proba: left.pop(0) if left else 0.0, greater_is_better=True), left


def assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def differs(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return any(not np.array_equal(x, y) for x, y in zip(a, b))


def best_weights(network: keras.Model, fold_dir: Path) -> tuple[list[np.ndarray], float, int]:
    """The weights, score and epoch of ``fold_dir``'s best checkpoint (loaded into ``network``)."""
    load_weights(network, fold_dir / BEST)
    with h5py.File(fold_dir / BEST, "r") as handle:
        score, epoch = float(handle.attrs[SCORE_ATTR]), int(handle.attrs[EPOCH_ATTR])
    return network.get_weights(), score, epoch


# --- the best checkpoint, across phases and across a resume -------------------------------------

def test_best_checkpoint_holds_the_best_epoch_of_any_phase(tiny_digits, tmp_path: Path) -> None:
    """Head epochs score 0.5, 0.9; unfrozen epochs 0.6, 0.7: the best is the head's second epoch,
    not the unfrozen phase's first (which a checkpoint starting afresh per phase would keep)."""
    model = model_config(regime="finetune", epochs=4, head_epochs=2, patience=4, finetune_lr=1e-3)
    task, images = fold_task(tiny_digits, tmp_path, model)
    metric, left = scripted([0.5, 0.9, 0.6, 0.7])
    spy = Spy()
    regimes.fit(task, images, metric, callbacks=[spy])
    assert not left and len(spy.fits) == 2  # both phases ran, every epoch scored
    assert differs(spy.epoch_ends[1], spy.epoch_ends[2]) and differs(spy.epoch_ends[1], spy.epoch_ends[3])

    weights, score, epoch = best_weights(spy.model, task.fold_dir)
    assert (score, epoch) == (pytest.approx(0.9), 1)
    assert_same(weights, spy.epoch_ends[1])


def test_resumed_fold_starts_at_its_backup_and_keeps_the_earlier_best(tiny_digits, tmp_path: Path) -> None:
    """Interrupted at the start of epoch 2 (the head phase done, epoch 1 of the unfrozen phase
    backed up): a fresh run resumes at epoch 2 with epoch 1's weights, and its worse epochs leave
    the best checkpoint at epoch 1."""
    model = model_config(regime="finetune", epochs=4, head_epochs=1, patience=4, finetune_lr=1e-3)
    task, images = fold_task(tiny_digits, tmp_path, model)
    metric, left = scripted([0.5, 0.9])
    first = Spy(interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        regimes.fit(task, images, metric, callbacks=[first])
    assert not left and sorted(first.epoch_ends) == [0, 1]
    assert differs(first.epoch_ends[0], first.epoch_ends[1])  # so a rerun from the head phase's end would show
    backup = AtomicBackupAndRestore(str(task.fold_dir / "backup-unfrozen"))
    assert backup.resume_epoch() == 2

    keras.backend.clear_session()
    task, images = fold_task(tiny_digits, tmp_path, model)  # the same fold_dir, a new network
    metric, left = scripted([0.6, 0.7])
    rerun = Spy()
    regimes.fit(task, images, metric, callbacks=[rerun])
    assert [epoch for epoch, _ in rerun.epoch_begins] == [2, 3]
    assert len(rerun.fits) == 1 and not left  # the finished head phase is not fitted again
    assert_same(rerun.fits[0]["begin"], first.epoch_ends[1])
    assert_same(rerun.epoch_begins[0][1], first.epoch_ends[1])

    weights, score, epoch = best_weights(rerun.model, task.fold_dir)
    assert (score, epoch) == (pytest.approx(0.9), 1)
    assert_same(weights, first.epoch_ends[1])
    assert differs(weights, rerun.epoch_ends[3])
    assert pd.read_csv(task.fold_dir / "log.csv")["epoch"].tolist() == [0, 1, 2, 3]


# --- what each regime trains ----------------------------------------------------------------------

def _leaf_weights(layer: keras.layers.Layer) -> dict[str, list[np.ndarray]]:
    """Each weighted leaf layer below ``layer`` by name, with its weights (trainable and not)."""
    if isinstance(layer, keras.Model):
        return {name: weights for sub in layer.layers for name, weights in _leaf_weights(sub).items()}
    return {layer.name: layer.get_weights()} if layer.weights else {}


class PhaseWeights(keras.callbacks.Callback):
    """Per ``fit`` call (one per phase): every weighted backbone and head layer's weights at its
    begin and at its end."""

    def __init__(self):
        super().__init__()
        self.phases: list[tuple[dict, dict]] = []

    def on_train_begin(self, logs=None):
        self.phases.append((_leaf_weights(self.model), {}))

    def on_train_end(self, logs=None):
        self.phases[-1][1].update(_leaf_weights(self.model))

    def layers(self) -> set[str]:
        return set(self.phases[0][0])

    def changed(self, phase: int) -> set[str]:
        begin, end = self.phases[phase]
        assert begin.keys() == end.keys()
        return {name for name in begin if differs(begin[name], end[name])}


BACKBONE = {f"block{b}_{kind}{n}" for b in (1, 2, 3) for kind in ("conv", "bn") for n in (1, 2)}


def _train_watching(tiny_digits, tmp_path: Path, **fields) -> PhaseWeights:
    task, images = fold_task(tiny_digits, tmp_path, model_config(**fields))
    watch = PhaseWeights()
    regimes.fit(task, images, metrics.get(task.metric), callbacks=[watch])
    return watch


def test_partial_trains_only_the_head_on_the_cut_backbone(tiny_digits, tmp_path: Path) -> None:
    watch = _train_watching(tiny_digits, tmp_path, regime="partial", epochs=1)
    cut = {"block1_conv1", "block1_bn1", "block1_conv2", "block1_bn2"}  # up to block1_pool
    head = watch.layers() - cut
    assert len(watch.phases) == 1 and cut < watch.layers() and len(head) == 2  # dense_units [16], classifier
    assert watch.changed(0) == head


def test_features_trains_a_head_and_never_the_backbone(tiny_digits, tmp_path: Path) -> None:
    """The backbone ran once, into the feature cache: training holds only the head and leaves the
    cached features as they were."""
    task, images = fold_task(tiny_digits, tmp_path, model_config(regime="features", epochs=1))
    cached = {path.name: np.load(path) for path in task.features.glob("*.npy")}
    watch = PhaseWeights()
    regimes.fit(task, images, metrics.get(task.metric), callbacks=[watch])
    assert watch.layers() == {"probabilities"} and watch.changed(0) == {"probabilities"}
    assert cached and {path.name for path in task.features.glob("*.npy")} == cached.keys()
    for name, features in cached.items():
        np.testing.assert_array_equal(np.load(task.features / name), features)


@pytest.mark.parametrize(("unfreeze", "trained"), [
    ("all", BACKBONE),
    # The top five leaves: block3_bn1, block3_relu1, block3_conv2, block3_bn2, block3_relu2 (four
    # or six would train another set of weights).
    (5, {"block3_bn1", "block3_conv2", "block3_bn2"}),
    ("block2_conv2", {"block2_conv2", "block2_bn2", "block3_conv1", "block3_bn1", "block3_conv2", "block3_bn2"}),
])
def test_finetune_trains_the_head_then_what_unfreeze_names(tiny_digits, tmp_path: Path, unfreeze, trained) -> None:
    watch = _train_watching(tiny_digits, tmp_path, regime="finetune", epochs=2, head_epochs=1, unfreeze=unfreeze,
                            finetune_lr=1e-3)
    head = watch.layers() - BACKBONE
    assert len(watch.phases) == 2 and BACKBONE < watch.layers() and head == {"probabilities"}
    assert watch.changed(0) == head  # the head phase: the backbone frozen
    assert watch.changed(1) == head | trained


def test_scratch_trains_every_layer(tiny_digits, tmp_path: Path) -> None:
    watch = _train_watching(tiny_digits, tmp_path, regime="scratch", epochs=1)
    assert len(watch.phases) == 1 and BACKBONE < watch.layers()
    assert watch.changed(0) == watch.layers()  # the backbone and the head, BatchNorm included


class FirstBatch(keras.callbacks.Callback):
    """The training rows' probabilities as ``fit`` starts, and the loss of its first batch."""

    def __init__(self, rows: np.ndarray):
        super().__init__()
        self.rows = rows

    def on_train_begin(self, logs=None):
        self.proba = self.model.predict(self.rows, verbose=0)

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            self.loss = float(logs["loss"])


def test_class_weights_weigh_each_rows_loss(tiny_digits, tmp_path: Path) -> None:
    """With class weights the loss is the batch's mean of each row's cross-entropy times its
    class's weight (the train stage's weights: scikit-learn's balanced, n / (classes * count)).
    One batch holds every training row of the ``features`` regime, so its loss is worked out by
    hand from the probabilities the network gives them at the start."""
    cfg, paths = tiny_digits
    trainer = train.Trainer(cfg, paths, workers=1)
    rows = np.flatnonzero(trainer.folds["fold"].to_numpy() != 0)
    balanced = trainer._class_weight(model_config(class_weights=True), rows)
    counts = np.bincount(trainer.y[rows], minlength=10)
    assert balanced == pytest.approx({c: len(rows) / (10 * counts[c]) for c in range(10)})

    weights = {c: 0.5 + c / 4 for c in range(10)}  # far from 1, so a loss without them shows
    task, images = fold_task(tiny_digits, tmp_path, model_config(regime="features", epochs=1, batch_size=128, dropout=0.0),
                             class_weight=weights)
    # Every TTA view of a training image is a training row of its own.
    views = FeatureCache.load(task.features, ["train"], len(task.augment.tta)).views("train")
    features = np.concatenate([view[task.train_index] for view in views])
    y = np.tile(task.y[task.train_index], len(views))
    assert len(features) <= 128
    spy = FirstBatch(features)
    regimes.fit(task, images, metrics.get(task.metric), callbacks=[spy])
    cross_entropy = -np.log(np.clip(spy.proba[np.arange(len(y)), y], 1e-7, 1.0))
    expected = np.mean(np.array([weights[c] for c in y]) * cross_entropy)
    assert spy.loss == pytest.approx(expected, rel=1e-4)
    assert spy.loss != pytest.approx(cross_entropy.mean(), rel=1e-2)


# --- the train and predict stages' files, made of the right fold models and views -----------------

TTA = [[], [{"__class_fullname__": "HorizontalFlip", "p": 1.0}]]


@pytest.fixture(scope="module")
def staged(tiny_digits, tmp_path_factory):
    """The train then the predict stage run on a copy of the tiny competition with two TTA views,
    each task sent to a fold's process recorded: ``(cfg, paths, {fold: task})``."""
    cfg, source = tiny_digits
    paths = Paths.for_pipeline("tiny", tmp_path_factory.mktemp("staged"))
    shutil.copytree(source.root, paths.root, dirs_exist_ok=True)
    cfg = make_config(models=[{**MODEL, "name": "spy", "regime": "scratch", "epochs": 1}],
                      augment={"tta": TTA})
    tasks = {}
    real = isolate.call

    def record(function, *args, **kwargs):
        if function.endswith(":train_fold"):
            task = args[0]
            tasks[int(task.fold_dir.name.removeprefix("fold"))] = task
        return real(function, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(isolate, "call", record)
        train.run(cfg, paths, workers=1)
    predict.run(cfg, paths, workers=1)
    return cfg, paths, tasks


def test_each_oof_row_comes_from_the_fold_model_that_never_saw_it(staged) -> None:
    cfg, paths, tasks = staged
    folds = pd.read_csv(paths.folds, dtype={"id": str})
    ids = folds["id"].to_numpy()
    oof = pd.read_parquet(paths.oof / "spy.parquet")
    assert sorted(tasks) == list(range(cfg.folds.k))
    for fold, task in tasks.items():
        valid, trained = ids[task.valid_index], ids[task.train_index]
        assert set(valid) == set(folds.loc[folds["fold"] == fold, "id"])
        assert not set(valid) & set(trained) and len(valid) + len(trained) == len(ids)
        rows = oof[oof["fold"] == fold].set_index("id")
        assert sorted(rows.index) == sorted(valid)
        own = pd.read_parquet(task.fold_dir / "oof.parquet").set_index("id")
        assert sorted(own.index) == sorted(valid)
        np.testing.assert_array_equal(rows.loc[own.index, CLASSES].to_numpy(), own[CLASSES].to_numpy())


def test_test_predictions_average_folds_and_tta_views(staged) -> None:
    _, paths, tasks = staged
    test = pd.read_parquet(paths.test / "spy.parquet").set_index("id")
    per_fold = [pd.read_parquet(task.fold_dir / "test.parquet").set_index("id").loc[test.index, CLASSES].to_numpy()
                for task in tasks.values()]
    np.testing.assert_allclose(test[CLASSES].to_numpy(), np.mean(per_fold, axis=0), rtol=1e-12, atol=0)
    assert not np.allclose(per_fold[0], per_fold[1])  # two different fold models

    # The network as training built it, with fold 0's best weights, on the same test images.
    task = tasks[0]
    plan, _ = regimes.REGIMES[task.model.regime](task, open_caches(task.caches))
    plan.network.load_weights(str(task.fold_dir / BEST))
    test_images = np.load(paths.cache / str(task.size) / "test.npy")
    index = np.arange(len(test_images))
    views = [plan.network.predict(view_batches(test_images, index, task.augment, view, 32), verbose=0)
             for view in TTA]
    assert not np.allclose(views[0], views[1], rtol=0, atol=1e-5)  # the flip changes what the model says
    fold0 = pd.read_parquet(task.fold_dir / "test.parquet")[CLASSES].to_numpy()
    np.testing.assert_allclose(fold0, np.mean(views, axis=0), rtol=1e-5, atol=1e-6)
