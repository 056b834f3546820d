"""Folds: iterative multilabel stratification, stratified grouped folds, and their bad input."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_config
from sklearn.model_selection import GroupKFold, StratifiedKFold

from PIL import Image

from foldstack.core.config import ConfigError
from foldstack.core.errors import DataError
from foldstack.core.paths import Paths
from foldstack.data import splits
from foldstack.data.labels import join_labels, split_labels
from foldstack.stages import download, folds, predict, train
from foldstack.contracts import fold_done, folds_file
from foldstack.training.fold_task import BEST, members

K = 5


def positives_per_fold(y: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """``(n_labels, K)``: each label's positive rows in each fold."""
    return np.stack([y[fold == k].sum(axis=0) for k in range(K)], axis=1)


def multilabel_table(n: int = 300, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Six labels from common to rare, space-separated as imet writes them, and their matrix."""
    rng = np.random.default_rng(seed)
    names = np.array(["a", "b", "c", "d", "e", "f"])
    y = (rng.random((n, len(names))) < [0.5, 0.3, 0.15, 0.08, 0.05, 0.03]).astype(int)
    labels = [join_labels(names[row == 1]) for row in y]
    return pd.DataFrame({"id": [f"i{i}" for i in range(n)], "label": labels}), y


def test_multilabel_folds_balance_every_label_better_than_first_label_strata() -> None:
    """Iterative stratification spreads each label's positives within one of even; the old
    strata (each row's first label) balanced the first label only, and left later ones uneven."""
    table, y = multilabel_table()
    fold = splits.make_folds(table, K, seed=0, task="multilabel").to_numpy()
    assert sorted(np.bincount(fold)) == [60] * K
    new = np.ptp(positives_per_fold(y, fold), axis=1)

    old_strata = split_labels(table["label"]).str[0].fillna("")
    old = np.zeros(len(table), int)
    for k, (_, valid) in enumerate(StratifiedKFold(K, shuffle=True, random_state=0).split(table, old_strata)):
        old[valid] = k
    before = np.ptp(positives_per_fold(y, old), axis=1)

    assert new.max() <= 1, new
    assert before.max() >= 3 and new.sum() < before.sum(), (new, before)
    again = splits.make_folds(table, K, seed=0, task="multilabel").to_numpy()
    assert (fold == again).all()  # the same folds on every run for the same seed


def test_multilabel_labels_rarer_than_the_folds_are_allowed_and_named(caplog) -> None:
    table = pd.DataFrame({"id": [f"i{i}" for i in range(12)], "label": ["a"] * 8 + ["a b"] * 2 + ["c", ""]})
    fold = splits.make_folds(table, 3, seed=0, task="multilabel")
    assert sorted(fold.unique()) == [0, 1, 2]
    assert "2 label(s) have fewer positives than the 3 folds" in caplog.text


def patients(seed: int = 0) -> tuple[pd.DataFrame, pd.Series, np.ndarray]:
    """siim-isic in small: 150 patients with 1 to 7 images each, a few melanomas, some patients
    with more than one."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 8, 150)
    groups = pd.Series(np.repeat([f"IP_{i:04d}" for i in range(len(sizes))], sizes))
    target = np.zeros(len(groups), int)
    sick = rng.choice(len(sizes), 12, replace=False)
    for patient in sick:  # one to three melanomas among a sick patient's images
        rows = np.flatnonzero(groups == f"IP_{patient:04d}")
        target[rng.choice(rows, min(len(rows), rng.integers(1, 4)), replace=False)] = 1
    table = pd.DataFrame({"id": [f"ISIC_{i:07d}" for i in range(len(groups))], "label": target.astype(str)})
    return table, groups, target


def test_stratified_grouped_folds_keep_patients_whole_and_spread_rare_positives() -> None:
    table, groups, target = patients()
    fold = splits.make_folds(table, K, seed=0, task="binary", strategy="stratified_grouped", groups=groups)
    assert fold.groupby(groups).nunique().max() == 1  # no patient in two folds
    spread = np.ptp(np.bincount(fold[target == 1], minlength=K))

    grouped = np.zeros(len(table), int)  # GroupKFold alone, as `grouped` does
    for k, (_, valid) in enumerate(GroupKFold(K, shuffle=True, random_state=0).split(table, groups=groups)):
        grouped[valid] = k
    assert pd.Series(grouped).groupby(groups).nunique().max() == 1
    grouped_spread = np.ptp(np.bincount(grouped[target == 1], minlength=K))
    # Sick patients hold up to three melanomas, so one or two apart is as even as whole patients allow.
    assert spread <= 2 < 6 <= grouped_spread, (spread, grouped_spread)


def test_stratified_grouped_multilabel_strata_are_each_rows_rarest_label() -> None:
    labels = pd.Series(["common", "common|rare", "common|mid", "mid|rare", "", "mid", "common", "tie1|tie2"])
    # common: 4 rows, mid: 3, rare: 2, tie1 and tie2: 1 each (a tie goes to the name).
    assert splits.strata(labels, "multilabel").tolist() == ["common", "rare", "mid", "rare", "", "mid", "common",
                                                           "tie1"]
    table, y = multilabel_table(n=200, seed=1)
    groups = pd.Series(np.arange(len(table)) // 2).astype(str)  # pairs of rows share a group
    fold = splits.make_folds(table, K, seed=0, task="multilabel", strategy="stratified_grouped", groups=groups)
    assert fold.groupby(groups).nunique().max() == 1
    assert positives_per_fold(y, fold.to_numpy())[-1].min() >= 1  # the rarest label reaches every fold


def test_grouped_strategies_need_enough_groups() -> None:
    table, groups, _ = patients()
    few = groups.where(groups < "IP_0003", "IP_0003")
    with pytest.raises(DataError, match=r"folds.group_column: 4 group\(s\), fewer than the 5 folds"):
        splits.make_folds(table, K, seed=0, task="binary", strategy="stratified_grouped", groups=few)
    with pytest.raises(DataError, match=r"folds.group_column: \d+ row\(s\) of groups for \d+ training images"):
        splits.make_folds(table, K, seed=0, task="binary", strategy="grouped", groups=groups.iloc[1:])


def test_grouped_folds_count_a_class_by_its_groups_not_its_rows() -> None:
    """6 melanomas of 3 patients pass a count of rows (6 >= 5 folds), yet only 3 folds can hold one."""
    table, groups, _ = patients()
    sick = groups.isin(["IP_0000", "IP_0001", "IP_0002"]).to_numpy()
    target = np.where(sick & (np.arange(len(table)) % 2 == 0), "1", "0")
    assert (target == "1").sum() >= K and len(set(groups[target == "1"])) == 3
    table = table.assign(label=target)
    for strategy in splits.GROUPED:
        with pytest.raises(DataError, match=r"^class '1' is in 3 group\(s\) \(folds.group_column\), fewer than "
                                            r"the 5 folds \(folds.k\); grouped folds cannot put it in each fold"):
            splits.make_folds(table, K, seed=0, task="binary", strategy=strategy, groups=groups)


def test_a_split_whose_validation_fold_lacks_a_class_is_refused_naming_fold_and_class() -> None:
    """Enough groups, but `grouped` folds ignore the label: some fold gets none of the rare class."""
    table, groups, _ = patients()
    sick = [f"IP_{i:04d}" for i in range(0, 150, 30)]  # five patients, all their images positive
    table = table.assign(label=np.where(groups.isin(sick), "1", "0"))
    fold = pd.Series(np.zeros(len(table), int))
    for k, (_, valid) in enumerate(GroupKFold(K, shuffle=True, random_state=0).split(table, groups=groups)):
        fold.iloc[valid] = k
    empty = sorted(set(range(K)) - set(fold[table["label"] == "1"]))
    assert empty, "the seed must leave a fold without a positive for this test to mean anything"
    with pytest.raises(DataError, match=rf"^fold {empty[0]}: its validation rows hold no class '1' "
                                        r"\(\d+ example\(s\) in all\)"):
        splits.make_folds(table, K, seed=0, task="binary", strategy="grouped", groups=groups)
    # Stratified grouped folds spread the same five patients over every fold: accepted.
    fold = splits.make_folds(table, K, seed=0, task="binary", strategy="stratified_grouped", groups=groups)
    assert set(fold[table["label"] == "1"]) == set(range(K))


@pytest.mark.parametrize(("column", "cells", "message"), [
    ("PatientID", ["p1", "p2"], r"train.csv: no group column 'patient_id' \(folds.group_column\); columns are "
                                r"'image_name', 'target', 'PatientID'"),
    ("patient_id", ["p1", " "], r"train.csv: row 3 has an empty 'patient_id' \(folds.group_column\)"),
])
def test_a_missing_or_empty_group_column_is_one_line_naming_the_file(tmp_path: Path, column: str, cells: list[str],
                                                                      message: str) -> None:
    cfg = make_config(folds={"k": 2, "strategy": "stratified_grouped", "group_column": "patient_id"})
    paths = Paths.for_pipeline("tiny", tmp_path)
    paths.data.mkdir(parents=True)
    pd.DataFrame({"image_name": ["a", "b"], "target": ["0", "1"], column: cells}).to_csv(
        paths.data / "train.csv", index=False)
    with pytest.raises(DataError, match=message):
        splits.read_groups(cfg, paths)


def test_grouped_strategies_need_a_group_column_in_the_yaml() -> None:
    with pytest.raises(ConfigError, match=r"folds = .*strategy 'stratified_grouped' needs group_column"):
        make_config(folds={"k": 2, "strategy": "stratified_grouped"})
    assert make_config(folds={"strategy": "stratified_grouped", "group_column": "PatientID"}).folds.k == 5


# --- the class order, written once with the folds ------------------------------------------------------


def binary_competition(folder: Path, labels: list[str], sample_column: str = "label") -> Path:
    """train.csv (id, label), train/<id>.png, test/t<n>.png and a sample submission whose value
    column is ``sample_column``."""
    rng = np.random.default_rng(0)
    ids = [f"i{n}" for n in range(len(labels))]
    for name in [*ids, "t0", "t1"]:
        (folder / ("test" if name.startswith("t") else "train")).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (8, 8, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(folder / ("test" if name.startswith("t") else "train") / f"{name}.png")
    pd.DataFrame({"id": ids, "label": labels}).to_csv(folder / "train.csv", index=False)
    pd.DataFrame({"id": ["t0", "t1"], sample_column: 0.5}).to_csv(folder / "sample_submission.csv", index=False)
    return folder


def binary_folds(root: Path, source: Path, **top):
    """A binary pipeline on ``source`` (``top``: YAML keys), downloaded and split into folds."""
    cfg = make_config(task="binary", metric="roc_auc", data={"source": {"type": "local", "path": str(source)}}, **top)
    paths = Paths.for_pipeline("tiny", root)
    download.run(cfg, paths)
    folds.run(cfg, paths)
    return cfg, paths


def test_the_class_order_is_written_with_the_folds_and_a_new_positive_class_trains_again(tmp_path: Path) -> None:
    source = binary_competition(tmp_path / "competition", ["cactus", "none"] * 4)
    cactus, paths = binary_folds(tmp_path / "root", source, positive_class="cactus")
    assert folds_file.read_classes(paths.folds, cactus).names == ("none", "cactus")
    first = folds_file.read(paths.folds, cactus.folds.k)
    run = members(cactus.models[0], cactus.folds.k, cactus.seed)[0]
    before = train.Trainer(cactus, paths)._fingerprint(cactus.models[0], run)

    none, _ = binary_folds(tmp_path / "root", source, positive_class="none")
    assert folds_file.read_classes(paths.folds, none).names == ("cactus", "none")
    pd.testing.assert_frame_equal(folds_file.read(paths.folds, none.folds.k), first)  # the same rows...
    assert train.Trainer(none, paths)._fingerprint(none.models[0], run) != before  # ...yet every fold trains again
    # Folds written for another positive class are refused, not relabelled.
    with pytest.raises(DataError, match=r"classes.json: class 'none' is the positive one but positive_class = "
                                        r"'cactus'; run `make folds` again"):
        train.Trainer(cactus, paths)


def test_a_positive_class_from_the_sample_submission_is_kept_without_it(tmp_path: Path) -> None:
    """The sample submission names the positive class; later stages read it from the folds, so a
    machine without the competition's files (a bundle) keeps it."""
    source = binary_competition(tmp_path / "competition", ["cactus", "none"] * 4, sample_column="none")
    cfg, paths = binary_folds(tmp_path / "root", source)
    (paths.data / "sample_submission.csv").unlink()
    assert predict.Predictor(cfg, paths).classes.names == ("cactus", "none")  # what `predict --images` encodes by
    assert train.Trainer(cfg, paths).classes.names == ("cactus", "none")


def test_stages_after_folds_refuse_folds_without_their_class_order(tiny_digits, tmp_path: Path) -> None:
    cfg, paths = tiny_digits
    with pytest.raises(DataError, match=r"classes.json: not found; run `make folds`"):
        folds_file.read_classes(tmp_path / "folds.csv", cfg)
    with pytest.raises(DataError, match=r"classes.json: written for task 'multiclass' but the pipeline's task is "
                                        r"'multilabel'; run `make folds` again"):
        folds_file.read_classes(paths.folds, make_config(task="multilabel", metric="f1_micro"))


# --- a fold that ends without a checkpoint -----------------------------------------------------------


class CheckpointlessFolds:
    """An executor standing in for the fold processes: each job ends at once with uniform OOF
    probabilities, and only the folds in ``scored`` leave ``best.weights.h5`` (the others' every
    score was NaN, so the best checkpoint never wrote)."""

    def __init__(self, scored: set[int]):
        self.scored = scored

    def run(self, jobs, done) -> None:
        for job in jobs:
            task = job.args[0]
            if int(task.fold_dir.name.removeprefix("fold")) in self.scored:
                (task.fold_dir / BEST).write_bytes(b"weights")
            oof = np.full((len(task.valid_index), task.n_classes), 1.0 / task.n_classes)
            done(job, {"oof": oof, "device": {"backend": "stand-in", "gpus": 0, "mixed_precision": False},
                       "peak_mb": 0, "resumed_from": None}, 0.1)


def test_a_fold_without_a_checkpoint_is_never_marked_done(tiny_digits, tmp_path: Path, monkeypatch) -> None:
    cfg, source = tiny_digits
    shutil.copytree(source.root, tmp_path, dirs_exist_ok=True)
    paths = Paths.for_pipeline(cfg.name, tmp_path)
    for trained in (paths.models, paths.oof):  # the shared fixture's folds only: another test may have trained there
        shutil.rmtree(trained, ignore_errors=True)
    monkeypatch.setattr(train.compute, "executor_for", lambda *_: contextlib.nullcontext(CheckpointlessFolds({0})))
    with pytest.raises(train.FoldFailed, match=r"fold1/best.weights.h5: m fold 1 ended without a checkpoint: no "
                                               r"epoch's accuracy was a finite number .*not marked done"):
        train.run(cfg, paths, workers=1)
    assert fold_done.exists(paths.models / "m" / "fold0")  # the fold that finished keeps its result
    assert not fold_done.exists(paths.models / "m" / "fold1")
    assert not (paths.oof / "m.parquet").exists()  # no OOF file with a fold that has no model
