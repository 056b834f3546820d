"""Second rounds (``training/rounds.py``): pseudo-labels and OOF soft-label distillation.

What they do (pseudo-labelled test images really join a fold's training batches, only above the
threshold, never a validation row; soft targets are the alpha mix; the stage retrains a student
whose teachers changed) and the leak tests: on labels that are pure noise, a student fed by this
module's fold-k sources scores at chance, and the same student fed by the naive source (the
teachers' fold mean, their plain OOF) scores far above it. The leak tests use a 1-nearest-neighbour
learner for teachers and students: it memorises every label it sees, the worst case for a leak.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.neighbors import KNeighborsClassifier

from foldstack.contracts import fold_done, predictions
from foldstack.core.config import ConfigError, ModelConfig
from foldstack.core.metrics import one_hot
from foldstack.core.paths import Paths
from foldstack.stages import download, folds, predict, train
from foldstack.training import worker
from foldstack.training.fold_task import FoldTask, JoinedRows, predict_task
from foldstack.training.regimes import features, train_batches
from foldstack.training.rounds import Teachers, pseudo_rows, round_fields, source_key

from conftest import TINY, make_config

TEACHER = {"name": "t", "backbone": "small_cnn", "weights": "none", "image_size": 16, "regime": "scratch",
           "epochs": 1, "batch_size": 16}


def student(**fields) -> dict:
    return {**TEACHER, "name": "s", **fields}


def models(**fields) -> list[ModelConfig]:
    """The teacher and a student of it with ``fields``, validated as a pipeline's models."""
    return make_config(models=[TEACHER, student(**fields)]).models


# --- configuration -------------------------------------------------------------------------------


def test_a_teacher_must_be_listed_before_its_student() -> None:
    with pytest.raises(ConfigError, match=r"models\[0\]\.distill\.from: 't' is not a model listed before 's'"):
        make_config(models=[student(distill={"from": ["t"]}), TEACHER])
    with pytest.raises(ConfigError, match=r"models\.1\.pseudo_labels\.threshold = 1\.5"):
        make_config(models=[TEACHER, student(pseudo_labels={"from": ["t"], "threshold": 1.5})])
    plain = make_config(models=[TEACHER]).models[0]
    assert plain.pseudo_labels is None and plain.distill is None and plain.teachers == []


# --- what the sources give a fold ----------------------------------------------------------------


def test_pseudo_rows_keep_only_confident_test_images_with_hard_or_soft_targets() -> None:
    proba = np.array([[0.95, 0.05, 0.0], [0.5, 0.3, 0.2], [0.0, 0.1, 0.9], [0.1, 0.89, 0.01]])
    hard = pseudo_rows(proba, 0.9, soft=False, multilabel=False)
    np.testing.assert_array_equal(hard.index, [0, 2])
    np.testing.assert_array_equal(hard.targets, [[1, 0, 0], [0, 0, 1]])
    soft = pseudo_rows(proba, 0.9, soft=True, multilabel=False)
    np.testing.assert_allclose(soft.targets, proba[[0, 2]])
    multilabel = pseudo_rows(np.array([[0.95, 0.02], [0.95, 0.6], [0.08, 0.03]]), 0.9, soft=False, multilabel=True)
    np.testing.assert_array_equal(multilabel.index, [0, 2])
    np.testing.assert_array_equal(multilabel.targets, [[1, 0], [0, 0]])


def fake_teachers(n_rows: int, n_test: int, k: int, n_classes: int, seed: int = 0):
    """Random per-fold probabilities of each teacher (``t``, ``u``) on each split."""
    rng = np.random.default_rng(seed)
    made = {(name, split): [rng.dirichlet(np.ones(n_classes), n) for _ in range(k)]
            for name in ("t", "u") for split, n in (("train", n_rows), ("test", n_test))}
    return lambda name, split: made[name, split]


def test_a_fold_learns_from_its_teachers_fold_k_models_only() -> None:
    teacher_u = {**TEACHER, "name": "u"}
    s = make_config(models=[TEACHER, teacher_u, student(distill={"from": ["t", "u"], "alpha": 0.3},
                                                       pseudo_labels={"from": ["u"], "threshold": 0.5,
                                                                      "soft": True})]).models[2]
    n, k, classes = 30, 3, 4
    y = np.arange(n) % classes
    fold = np.arange(n) % k
    predictions = fake_teachers(n, 20, k, classes)
    for f in range(k):
        train_index = np.flatnonzero(fold != f)
        fields = round_fields(s, f, train_index, y, classes, False, predictions)
        teacher = (predictions("t", "train")[f] + predictions("u", "train")[f]) / 2
        expected = one_hot(y, classes).astype(np.float32)
        expected[train_index] = 0.3 * expected[train_index] + 0.7 * teacher[train_index]
        np.testing.assert_allclose(fields["soft_targets"], expected, rtol=1e-6)
        # Validation rows keep their one-hot target: nothing of a teacher reaches them.
        np.testing.assert_array_equal(fields["soft_targets"][fold == f], one_hot(y[fold == f], classes))
        test = predictions("u", "test")[f]
        np.testing.assert_array_equal(fields["pseudo"].index, np.flatnonzero(test.max(axis=1) >= 0.5))
        np.testing.assert_allclose(fields["pseudo"].targets, test[fields["pseudo"].index], rtol=1e-6)


# --- the leak tests --------------------------------------------------------------------------------

K = 5


def knn(X: np.ndarray, y: np.ndarray) -> KNeighborsClassifier:
    return KNeighborsClassifier(n_neighbors=1).fit(X, y)


def teacher_folds(X: np.ndarray, y: np.ndarray, fold: np.ndarray, Xs: dict[str, np.ndarray]):
    """1-NN teachers, one per fold, fitted on every other fold: each fold's probabilities of each split."""
    fitted = [knn(X[fold != f], y[fold != f]) for f in range(K)]
    made = {split: [one_hot(m.predict(Z), 2).astype(np.float64) for m in fitted] for split, Z in Xs.items()}
    return lambda name, split: made[split]


def fold_mean(predictions):
    """The naive source a pseudo-label could take: the teachers' mean over folds, as in
    ``test/<m>.parquet`` (a stack fitted on every OOF row leaks the same way)."""
    return lambda name, split: [np.mean(predictions(name, split), axis=0)] * K


def plain_oof(predictions, fold: np.ndarray):
    """The naive source a soft label could take: the teachers' OOF, row i from the fold that held it out."""
    def source(name, split):
        per_fold = predictions(name, split)
        oof = np.stack([per_fold[f][i] for i, f in enumerate(fold)])
        return [oof] * K
    return source


def student_oof_accuracy(s: ModelConfig, X: np.ndarray, y: np.ndarray, fold: np.ndarray, Xtest: np.ndarray,
                         predictions) -> float:
    """A 1-NN student fold by fold, on its training rows' targets and pseudo-labelled test images
    as ``round_fields`` gives them; its OOF accuracy."""
    correct = 0
    for f in range(K):
        train_index = np.flatnonzero(fold != f)
        fields = round_fields(s, f, train_index, y, 2, False, predictions)
        targets = fields.get("soft_targets", one_hot(y, 2))[train_index].argmax(axis=1)
        rows, labels = X[train_index], targets
        if "pseudo" in fields:
            rows = np.concatenate([rows, Xtest[fields["pseudo"].index]])
            labels = np.concatenate([labels, fields["pseudo"].targets.argmax(axis=1)])
        correct += (knn(rows, labels).predict(X[fold == f]) == y[fold == f]).sum()
    return correct / len(y)


def noise_labels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 32)), rng.integers(0, 2, n)


# 400 rows: an accuracy on coin-flip labels lies within 0.5 +/- 0.1 (4 sd) unless a label leaks.
CHANCE = 0.1


def pseudo_leak_case(seed: int = 1):
    """Coin-flip labels; every test image is a near copy of a training image (as Kaggle test
    sets hold near-duplicates): a pseudo-label that saw a row's label hands it to the row's fold."""
    X, y = noise_labels(400, seed)
    fold = np.arange(len(y)) % K
    Xtest = X + np.random.default_rng(seed + 1).normal(scale=0.01, size=X.shape)
    s = models(pseudo_labels={"from": ["t"], "threshold": 0.7})[1]
    return s, X, y, fold, Xtest, teacher_folds(X, y, fold, {"train": X, "test": Xtest})


def test_pseudo_labels_leak_no_fold_label() -> None:
    s, X, y, fold, Xtest, predictions = pseudo_leak_case()
    assert abs(student_oof_accuracy(s, X, y, fold, Xtest, predictions) - 0.5) < CHANCE


def test_the_pseudo_label_leak_test_fails_the_fold_mean_source() -> None:
    s, X, y, fold, Xtest, predictions = pseudo_leak_case()
    assert student_oof_accuracy(s, X, y, fold, Xtest, fold_mean(predictions)) > 0.9


def distill_leak_case(seed: int = 2):
    """Coin-flip labels; each row has a near twin in the next fold with its own label: a soft
    label given to a twin by a model that saw the other twin carries that twin's label."""
    X, y = noise_labels(200, seed)
    X = np.concatenate([X, X + np.random.default_rng(seed + 1).normal(scale=0.01, size=X.shape)])
    y = np.concatenate([y, np.random.default_rng(seed + 2).integers(0, 2, len(y))])
    first = np.arange(200) % K
    fold = np.concatenate([first, (first + 1) % K])
    s = models(distill={"from": ["t"], "alpha": 0.3})[1]
    return s, X, y, fold, teacher_folds(X, y, fold, {"train": X})


def test_distillation_leaks_no_fold_label() -> None:
    s, X, y, fold, predictions = distill_leak_case()
    assert abs(student_oof_accuracy(s, X, y, fold, X, predictions) - 0.5) < CHANCE


def test_the_distillation_leak_test_fails_the_plain_oof_source() -> None:
    s, X, y, fold, predictions = distill_leak_case()
    assert student_oof_accuracy(s, X, y, fold, X, plain_oof(predictions, fold)) > 0.9


# --- what the network trains on ------------------------------------------------------------------


def numbered(n: int, offset: int, size: int = 16) -> np.ndarray:
    """Images whose every pixel holds the image's number (offset + row): a batch tells its rows."""
    return np.broadcast_to((offset + np.arange(n, dtype=np.uint8))[:, None, None, None], (n, size, size, 3)).copy()


def test_pseudo_labelled_test_images_join_the_training_batches_and_no_validation_row() -> None:
    s = models(pseudo_labels={"from": ["t"]})[1]
    y = np.arange(20) % 4
    train_index, valid_index = np.arange(10), np.arange(10, 20)
    pseudo = JoinedRows(index=np.array([1, 4]), targets=np.array([[0, 0, 0.2, 0.8], [1, 0, 0, 0]], np.float32))
    task = FoldTask(model=s, task="multiclass", metric="accuracy", y=y, n_classes=4, train_index=train_index,
                    valid_index=valid_index, augment=make_config().augment, caches={}, fold_dir=Path("."), seed=0,
                    pseudo=pseudo)
    batches = train_batches(task, {"train": numbered(20, 0), "test": numbered(6, 100)})
    seen = {}
    for b in range(len(batches)):
        images, targets = batches[b]
        seen.update({int(image[0, 0, 0]): tuple(target) for image, target in zip(images, targets)})
    assert sorted(seen) == [*range(10), 101, 104]  # the training rows and the two test images, once each
    assert seen[101] == pytest.approx((0, 0, 0.2, 0.8)) and seen[104] == (1, 0, 0, 0)
    assert all(seen[row] == tuple(one_hot(y[[row]], 4)[0]) for row in range(10))


def test_the_features_regime_trains_on_pseudo_labelled_test_features_too(tmp_path: Path) -> None:
    s = models(regime="features", pseudo_labels={"from": ["t"]}, distill={"from": ["t"], "alpha": 0.5})[1]
    y = np.arange(8) % 2
    soft = np.full((8, 2), 0.5, np.float32)
    for split, n, offset in (("train", 8, 0), ("test", 3, 100)):
        np.save(tmp_path / f"{split}-view0.npy", np.arange(offset, offset + n, dtype=np.float32)[:, None])
    pseudo = JoinedRows(index=np.array([2]), targets=np.array([[0, 1]], np.float32))
    task = FoldTask(model=s, task="multiclass", metric="accuracy", y=y, n_classes=2, train_index=np.arange(4),
                    valid_index=np.arange(4, 8), augment=make_config().augment, caches={}, fold_dir=tmp_path,
                    seed=0, features=tmp_path, soft_targets=soft, pseudo=pseudo)
    plan, _ = features(task, {"train": None, "test": None})
    batches = plan.train()["x"]  # the rows the features head trains on, in a shuffled order
    served = [batches[b] for b in range(len(batches))]
    x = np.concatenate([batch_x for batch_x, _ in served])[:, 0]
    y_served = np.concatenate([batch_y for _, batch_y in served])
    order = np.argsort(x)
    np.testing.assert_array_equal(x[order], [0, 1, 2, 3, 102])
    np.testing.assert_allclose(y_served[order], [[0.5, 0.5]] * 4 + [[0, 1]])


# --- the stage ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def competition(tmp_path_factory) -> Paths:
    return new_competition(tmp_path_factory.mktemp("rounds"))


def new_competition(root: Path) -> Paths:
    """A 50-image digits competition (40 train, 10 test) with 2 folds."""
    cfg = pipeline()
    paths = Paths.for_pipeline("tiny", root)
    download.run(cfg, paths)
    folds.run(cfg, paths)
    return paths


def pipeline(threshold: float = 0.5):
    data = {**TINY["data"], "source": {"type": "embedded", "dataset": "digits", "limit": 50}}
    # Heads on the frozen features of a random small CNN: each fold trains in about a second.
    return make_config(data=data, models=[
        {**TEACHER, "regime": "features"},
        student(regime="features", epochs=2, pseudo_labels={"from": ["t"], "threshold": threshold},
                distill={"from": ["t"], "alpha": 0.5})])


def done(paths: Paths, model: str, fold: int) -> dict:
    return json.loads((paths.models / model / f"fold{fold}" / "done.json").read_text())


def test_the_stage_trains_a_student_on_its_teachers_folds_and_notices_a_changed_teacher(
        competition: Paths, capsys) -> None:
    paths = competition
    train.run(pipeline(), paths, only=["t"], workers=1)
    trainer = train.Trainer(pipeline(), paths, workers=1)
    teachers = Teachers(pipeline(), paths, trainer.images, 10, trainer.folds_digest)
    test = teachers.predictions("t", "test")
    threshold = float(np.median(test[0].max(axis=1)))  # about half of fold 0's test images pass
    cfg = pipeline(threshold=threshold)
    train.run(cfg, paths, workers=1)
    for fold in range(2):
        record = done(paths, "s", fold)
        assert record["source"] == source_key(cfg.model("s"), fold, teachers)
        assert record["pseudo_labelled"] == (test[fold].max(axis=1) >= threshold).sum()
    assert 0 < done(paths, "s", 0)["pseudo_labelled"] < 10
    assert len(pd.read_parquet(paths.oof / "s.parquet")) == 40

    capsys.readouterr()
    train.run(cfg, paths, workers=1)
    assert "skip s fold 0" in capsys.readouterr().out

    # Fold 0 of the teacher changes (here: it takes fold 1's weights): fold 0 of the student no
    # longer counts as finished (the next run trains it again), fold 1 still does; the predict
    # stage still takes the student as it is, since its recipe holds.
    teacher = paths.models / "t"
    shutil.copy(teacher / "fold1" / "best.weights.h5", teacher / "fold0" / "best.weights.h5")
    fresh = Teachers(cfg, paths, trainer.images, 10, trainer.folds_digest)
    fingerprint = done(paths, "s", 0)["fingerprint"]
    assert fold_done.finished(paths.models / "s" / "fold0", fingerprint, source_key(cfg.model("s"), 0, fresh)) is None
    assert fold_done.finished(paths.models / "s" / "fold1", fingerprint, source_key(cfg.model("s"), 1, fresh))
    assert len(predict.Predictor(cfg, paths).fold_dirs(cfg.model("s"))) == 2


def test_a_students_fold_k_learns_from_its_teachers_fold_k_files(tmp_path: Path, monkeypatch) -> None:
    """Through the train stage: fold k of a student takes as pseudo-labels (every test image,
    soft) exactly the test predictions the predict stage wrote for the teacher's fold k
    (``fold<k>/test.parquet``), and as distillation targets the alpha mix with what fold k's
    weights predict of the training rows; the two folds' sources differ, so a student fed the
    teacher's fold mean, or its fold k + 1, fails."""
    paths = new_competition(tmp_path)
    teacher_only = make_config(data=pipeline().data.model_dump(by_alias=True), models=[{**TEACHER, "regime": "features"}])
    train.run(teacher_only, paths, workers=1)
    predict.run(teacher_only, paths, workers=1)
    alpha = 0.5
    cfg = make_config(data=teacher_only.data.model_dump(by_alias=True), models=[
        {**TEACHER, "regime": "features"},
        student(regime="features", pseudo_labels={"from": ["t"], "threshold": 0.0, "soft": True},
                distill={"from": ["t"], "alpha": alpha})])

    tasks = {}
    fold_task = train.Trainer._fold_task

    def recorded(self, model, run, *args, **kwargs):
        task = fold_task(self, model, run, *args, **kwargs)
        if model.name == "s":
            tasks[run.fold] = task
        return task

    monkeypatch.setattr(train.Trainer, "_fold_task", recorded)
    train.run(cfg, paths, only=["s"], workers=1)
    assert sorted(tasks) == [0, 1]

    trainer = train.Trainer(cfg, paths, workers=1)
    test_ids = pd.Index(trainer.images.ids("test"))
    t = cfg.model("t")
    cache = trainer.images.cache("train", t)
    fold_dirs = tuple(paths.models / "t" / f"fold{fold}" for fold in (0, 1))
    on_test = [predictions.read_predictions(fold_dir / "test.parquet", trainer.classes, expected=test_ids)
               [list(trainer.classes.columns)].to_numpy() for fold_dir in fold_dirs]
    on_train = worker.predict_folds(predict_task(cfg, paths.models, t, 10, cache, fold_dirs, "train",
                                                 trainer.folds["id"].tolist()), send=lambda message: None)
    assert np.abs(on_test[0] - on_test[1]).max() > 1e-3 and np.abs(on_train[0] - on_train[1]).max() > 1e-3

    for fold, task in tasks.items():  # fold k's sources are fold k's files
        np.testing.assert_array_equal(task.pseudo.index, np.arange(len(test_ids)))  # threshold 0: every image
        np.testing.assert_allclose(task.pseudo.targets, on_test[fold], atol=1e-5)
        rows = task.train_index
        teacher = (task.soft_targets[rows] - alpha * one_hot(trainer.y[rows], 10)) / (1 - alpha)
        np.testing.assert_allclose(teacher, on_train[fold][rows], atol=1e-5)
        np.testing.assert_array_equal(task.soft_targets[task.valid_index], one_hot(trainer.y[task.valid_index], 10))
