"""`task: regression` (a popularity score, an age): one linear output per network on the target
standardised per fold, one ``prediction`` column in every prediction file, value candidates at
level two under the same nested CV, numbers (clipped to ``regression.range``) in the sample's
column, and a report with predicted against true and the largest errors.

The end-to-end run trains small_cnn at 16 px on digits 0-4, each image's target ``10 * digit +
3.5`` (far from 0, so an unstandardised unit would start far off), laid out as a CSV competition.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import mean_absolute_error, r2_score

from foldstack.contracts import folds_file, stack_output
from foldstack.core import metrics
from foldstack.core.config import ConfigError
from foldstack.core.errors import DataError
from foldstack.core.paths import Paths
from foldstack.data import splits
from foldstack.data.labels import Classes
from foldstack.level2 import candidates, selection
from foldstack.pipeline import parse_pipeline
from foldstack.stages import check, download, folds, report, submit
from foldstack.training import network
from foldstack.training.fold_task import FoldTask, training_target

from conftest import predict_images, run_to_stack, small_cnn_pipeline, write_digits

DIGITS = 5
RANGE = (5.0, 40.0)


def target_of(digit: np.ndarray) -> np.ndarray:
    return 10.0 * np.asarray(digit, dtype=np.float64) + 3.5


def pawpularity(**overrides) -> dict:
    """A regression pipeline on a local folder (petfinder-pawpularity's shape: Id, Pawpularity)."""
    raw = small_cnn_pipeline("paw", "regression", "rmse", {
        "id_column": "Id", "label_column": "Pawpularity", "train_dir": "train", "test_dir": "test"},
        submission={"format": "value"}, regression={"loss": "huber", "range": list(RANGE)})
    return {**raw, **overrides}


# --- metrics, config, labels, folds -------------------------------------------------------------


def test_rmse_mae_r2_score_one_prediction_column_by_hand() -> None:
    """y = 1 2 3 4, predicted 1 3 3 2: errors 0 1 0 -2, RMSE sqrt(5/4), MAE 3/4, R² 1 - 5/5 = 0."""
    y = np.array([1.0, 2.0, 3.0, 4.0])
    predicted = np.array([[1.0], [3.0], [3.0], [2.0]])
    assert metrics.get("rmse")(y, predicted) == pytest.approx(np.sqrt(1.25))
    assert metrics.get("mae")(y, predicted) == pytest.approx(mean_absolute_error(y, predicted[:, 0]))
    assert metrics.get("r2")(y, predicted) == pytest.approx(r2_score(y, predicted[:, 0]))
    assert not metrics.get("rmse").greater_is_better and metrics.get("r2").greater_is_better
    with pytest.raises(ValueError, match="'accuracy' needs classes"):
        metrics.get("accuracy")(y, predicted)
    with pytest.raises(ValueError, match="'rmse' scores a regression"):
        metrics.get("rmse")(np.array([0, 1]), np.array([[0.2, 0.8], [0.9, 0.1]]))


@pytest.mark.parametrize(("overrides", "message"), [
    ({"metric": "accuracy"}, "task 'regression' needs one of: mae, r2, rmse"),
    ({"task": "multiclass", "regression": None, "submission": {"format": "label"}}, "needs one of"),
    ({"submission": {"format": "label"}}, "format 'value'"),
    ({"regression": {"range": [3, 1]}}, "low < high"),
    ({"regression": {"loss": "l1"}}, "loss"),
])
def test_a_regression_pipeline_needs_value_metrics_and_value_submissions(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_pipeline(pawpularity(**overrides))


def test_regression_settings_and_class_weights_belong_to_a_regression() -> None:
    raw = pawpularity(task="multiclass", metric="accuracy", submission={"format": "label"})
    with pytest.raises(ConfigError, match="regression is for task 'regression'"):
        parse_pipeline(raw)
    model = {**pawpularity()["models"][0], "class_weights": True}
    with pytest.raises(ConfigError, match="class_weights: not for task 'regression'"):
        parse_pipeline(pawpularity(models=[model]))


def test_a_target_that_is_not_a_number_is_one_line_naming_its_row() -> None:
    labels = pd.Series(["3.5", "12", "lots", "7"], index=["a", "b", "c", "d"])
    with pytest.raises(DataError, match="train.csv: id 'c' has target 'lots', which is not a number"):
        Classes.from_labels(labels, "regression", source="train.csv")
    classes = Classes.from_labels(labels.drop("c"), "regression")
    assert classes.regression and classes.names == () and classes.columns == ("prediction",)
    np.testing.assert_array_equal(classes.encode(labels.drop("c")), [3.5, 12.0, 7.0])
    assert classes.encode(labels.drop("c")).dtype == np.float64


def test_folds_are_stratified_on_the_targets_bins() -> None:
    """A skewed target: 40 rows near 0, 10 far above. Bins on the target put the high rows in
    both folds in equal numbers (a split blind to the target need not)."""
    values = np.r_[np.linspace(0, 1, 40), np.linspace(50, 60, 10)]
    table = pd.DataFrame({"id": [f"i{n}" for n in range(50)], "label": [f"{v:.3f}" for v in values]})
    for seed in range(5):
        fold = splits.make_folds(table, 2, seed, "regression")
        high = fold[values >= 50]
        assert sorted(high.value_counts().tolist()) == [5, 5]
        assert sorted(fold.value_counts().tolist()) == [25, 25]
    assert len(np.unique(splits.target_bins(table["label"], 2))) == splits.MAX_BINS


def test_target_standardisation_is_fitted_on_the_folds_training_rows_alone() -> None:
    cfg = parse_pipeline(pawpularity())
    y = np.array([0.0, 10.0, 20.0, 1000.0])
    task = FoldTask(model=cfg.models[0], task="regression", metric="rmse", y=y, n_classes=0,
                    train_index=np.array([0, 1, 2]), valid_index=np.array([3]), augment=cfg.augment,
                    caches={}, fold_dir=Path("/nowhere"), seed=0)
    assert task.target_scale == pytest.approx((10.0, np.std([0.0, 10.0, 20.0])))
    np.testing.assert_array_equal(task.targets, y[:, None].astype(np.float32))


def test_the_loss_is_mse_or_huber_on_the_target_standardised_by_the_folds_rows() -> None:
    """Mean 10, std 5: targets 10, 30 and predictions 15, 10 are standardised errors 1 and -4.
    MSE: (1 + 16) / 2. Huber at delta 1: (0.5 + (4 - 0.5)) / 2."""
    y_true, y_pred = np.array([[10.0], [30.0]]), np.array([[15.0], [10.0]])
    mse = network.StandardisedLoss("mse", 10.0, 5.0)
    huber = network.StandardisedLoss("huber", 10.0, 5.0, delta=1.0)
    assert float(mse(y_true, y_pred)) == pytest.approx(8.5)
    assert float(huber(y_true, y_pred)) == pytest.approx(2.0)
    cfg = parse_pipeline(pawpularity())  # loss: huber
    y = np.array([0.0, 10.0, 20.0, 1000.0])
    task = FoldTask(model=cfg.models[0], task="regression", metric="rmse", y=y, n_classes=0,
                    train_index=np.array([0, 1, 2]), valid_index=np.array([3]), augment=cfg.augment,
                    caches={}, fold_dir=Path("/nowhere"), seed=0, target=training_target(cfg))
    chosen = network._loss(task)
    assert (chosen.kind, chosen.mean, chosen.std) == ("huber", 10.0, pytest.approx(np.std([0.0, 10.0, 20.0])))
    # The features regime's head ends on the target's scale too.
    head = network.features_network(task, 8)
    scale = head.get_layer("unstandardise")
    assert (float(scale.mean), float(scale.std)) == pytest.approx(task.target_scale)
    assert head.predict(np.zeros((2, 8)), verbose=0).shape == (2, 1)


# --- level two --------------------------------------------------------------------------------------


def test_value_candidates_stack_a_regression_under_the_nested_cv() -> None:
    """Two noisy models of y (one biased by +5, one scaled by 2): every value candidate predicts
    one column; ridge, which may shift and rescale, beats the plain mean; classification
    candidates are not offered."""
    cfg = parse_pipeline(pawpularity())
    rng = np.random.default_rng(0)
    y = rng.normal(20.0, 5.0, 200)
    X = np.stack([y + 5 + rng.normal(0, 2, 200), 2 * y + rng.normal(0, 2, 200)], axis=1)[:, :, None]
    fold = np.arange(200) % 4
    rmse = metrics.get("rmse")
    names = selection.candidate_names(cfg, rmse)
    assert set(names) == {"best_single", "mean", "weighted_mean", "lightgbm", "ridge"}
    assert "caruana" in selection.left_out(cfg, rmse) and "ridge" not in selection.left_out(cfg, rmse)
    results = {name: selection.cross_validate(candidates.get(name).build(cfg), X, y, fold, rmse) for name in names}
    for result in results.values():
        assert result.oof.shape == (200, 1) and result.decision is None
    assert results["ridge"].fold_scores.mean() < results["mean"].fold_scores.mean() / 3
    model = candidates.get("ridge").build(cfg).fit(X, y)
    assert model.predict(X).shape == (200,)
    forced = parse_pipeline(pawpularity(stack={"candidates": ["caruana"]}))
    with pytest.raises(Exception, match="candidate 'caruana' needs class probabilities; task 'regression'"):
        selection.candidate_names(forced, rmse)


VALUE_CANDIDATES = selection.task_candidates("regression")


@pytest.mark.parametrize("name", VALUE_CANDIDATES)
def test_every_value_candidate_keeps_the_estimator_contract(name: str) -> None:
    cfg = parse_pipeline(pawpularity())
    rng = np.random.default_rng(1)
    y = rng.normal(0.0, 3.0, 80)
    X = (y[:, None] + rng.normal(0, 1, (80, 3)))[:, :, None]
    estimator = candidates.get(name).build(cfg)
    assert clone(estimator).get_params() == estimator.get_params()
    with pytest.raises(NotFittedError, match="Call 'fit'"):
        estimator.predict_proba(X)
    assert estimator.fit(X, y) is estimator and estimator.regression_ and not estimator.ordinal_
    assert estimator.predict_proba(X).shape == (80, 1) and estimator.predict(X).shape == (80,)
    with pytest.raises(ValueError, match="y has 79 rows but X has 80"):
        clone(estimator).fit(X, y[:-1])
    with pytest.raises(ValueError, match="finite numbers"):
        clone(estimator).fit(X, np.where(np.arange(80) == 3, np.nan, y))
    with pytest.raises(ValueError, match="fit saw 3 models"):
        estimator.predict_proba(X[:, :2])


# --- end to end -------------------------------------------------------------------------------------


def write_competition(folder: Path, n_train: int = 60, n_test: int = 15) -> pd.Series:
    """Digits 0-4 with numeric targets as a CSV competition; returns the test targets."""
    ids = [f"{i:08x}" for i in range(n_train + n_test)]
    target = pd.Series(target_of(write_digits(folder, ids, DIGITS, n_train, ("train", "test"))), index=ids)
    train_ids, test_ids = ids[:n_train], ids[n_train:]
    pd.DataFrame({"Id": train_ids, "Pawpularity": target[train_ids].to_numpy()}).to_csv(folder / "train.csv", index=False)
    pd.DataFrame({"Id": test_ids}).to_csv(folder / "test.csv", index=False)
    pd.DataFrame({"Id": test_ids, "Pawpularity": 0.0}).to_csv(folder / "sample_submission.csv", index=False)
    pd.DataFrame({"Id": test_ids, "Pawpularity": target[test_ids].to_numpy()}).to_csv(
        folder / "solution.csv", index=False)
    return target[test_ids]


def test_check_and_folds_name_the_row_whose_target_is_not_a_number(tmp_path: Path) -> None:
    write_competition(tmp_path / "competition", n_train=12, n_test=3)
    table = pd.read_csv(tmp_path / "competition" / "train.csv", dtype=str)
    table.loc[4, "Pawpularity"] = "n/a?"
    table.to_csv(tmp_path / "competition" / "train.csv", index=False)
    raw = pawpularity(data={**pawpularity()["data"], "source": {"type": "local", "path": str(tmp_path / "competition")}})
    cfg = parse_pipeline(raw)
    paths = Paths.for_pipeline("paw", tmp_path)
    download.run(cfg, paths)
    line = f"id '{table.loc[4, 'Id']}' has target 'n/a?', which is not a number"
    assert any(line in problem for problem in check.run(cfg, paths).problems)
    with pytest.raises(DataError, match=line.replace("?", "\\?")):
        folds.run(cfg, paths)
    table.loc[4, "Pawpularity"] = "7.25"
    table.to_csv(paths.data / "train.csv", index=False)
    assert check.run(cfg, paths).problems == []
    assert "targets 3.5 .. 43.5" in check.run(cfg, paths).render()


@pytest.fixture(scope="module")
def stacked(tmp_path_factory) -> tuple:
    """The competition downloaded, folded, trained, predicted and stacked: the config, its
    paths, the test targets, the leaderboard and what the stack stage printed."""
    root = tmp_path_factory.mktemp("paw")
    truth = write_competition(root / "competition")
    raw = pawpularity(data={**pawpularity()["data"], "source": {"type": "local", "path": str(root / "competition")}})
    cfg, paths, board, printed = run_to_stack(raw, root)
    return cfg, paths, truth, board, printed


@pytest.mark.slow
def test_each_network_predicts_the_target_on_its_scale_in_one_prediction_column(stacked) -> None:
    cfg, paths, *_ = stacked
    classes = folds_file.read_classes(paths.folds, cfg)
    assert classes.regression and json.loads(folds_file.classes_path(paths.folds).read_text())["regression"]
    oof = pd.read_parquet(paths.oof / "cnn.parquet")
    assert list(oof.columns) == ["id", "fold", "prediction"]
    assert list(pd.read_parquet(paths.test / "cnn.parquet").columns) == ["id", "prediction"]
    # On the target's scale (3.5 .. 43.5), not the standardised one: the unit's output is put back.
    assert oof["prediction"].between(-10, 60).all() and oof["prediction"].mean() > 10
    import h5py

    folds_csv = folds_file.read(paths.folds, cfg.folds.k)
    with h5py.File(paths.models / "cnn" / "fold0" / "best.weights.h5", "r") as weights:
        mean, std = (weights[f"layers/unstandardise/vars/{i}"][()] for i in (0, 1))
    trained = folds_csv.loc[folds_csv["fold"] != 0, "label"].astype(float)
    assert (mean, std) == pytest.approx((trained.mean(), trained.std(ddof=0)), rel=1e-5)


@pytest.mark.slow
def test_stack_and_submit_write_clipped_numbers_in_the_sample_column(stacked) -> None:
    cfg, paths, truth, board, out = stacked
    assert set(board["candidate"]) == {"best_single", "mean", "weighted_mean", "lightgbm", "ridge"}
    assert "(they need class probabilities): caruana, logistic, lightgbm_summary" in out
    assert (paths.stack / stack_output.PREDICTED).is_file() and not (paths.stack / "confusion.png").exists()
    chosen = json.loads((paths.stack / "chosen.json").read_text())
    assert chosen["regression"] is True and "cuts" not in chosen

    path = submit.run(cfg, paths)
    written = pd.read_csv(path)
    sample = pd.read_csv(paths.data / "sample_submission.csv")
    assert list(written.columns) == ["Id", "Pawpularity"]
    assert written["Id"].tolist() == [f"{i:08x}" for i in range(60, 75)] == sample["Id"].astype(str).tolist()
    stacked_test = pd.read_parquet(paths.stack / "test.parquet").set_index("id").loc[written["Id"], "prediction"]
    np.testing.assert_allclose(written["Pawpularity"], stacked_test.clip(*RANGE), rtol=1e-6)
    local = pd.read_csv(paths.submissions / "index.csv")["local_lb"].iloc[-1]
    assert local == pytest.approx(np.sqrt(np.mean((written["Pawpularity"].to_numpy() - truth.to_numpy()) ** 2)))
    # A range that cuts the values (one small network stays near the targets' mean, 23.5): the
    # submission holds them clipped, and the local score is of what is submitted.
    tight = cfg.model_copy(update={"regression": cfg.target.model_copy(update={"range": (24.0, 100.0)})})
    assert (stacked_test < 24.0).any()
    clipped = pd.read_csv(submit.run(tight, paths))
    np.testing.assert_allclose(clipped["Pawpularity"], stacked_test.clip(24.0, 100.0), rtol=1e-6)
    local = pd.read_csv(paths.submissions / "index.csv")["local_lb"].iloc[-1]
    assert local == pytest.approx(np.sqrt(np.mean((clipped["Pawpularity"].to_numpy() - truth.to_numpy()) ** 2)))


@pytest.mark.slow
def test_predict_images_gives_the_stacked_value(stacked, tmp_path: Path) -> None:
    cfg, paths, *_ = stacked
    frame = predict_images(paths, "test", tmp_path / "values.csv", "--explain")
    assert list(frame.columns) == ["image", "prediction", "distance", "unfamiliar", "heatmap"]
    # Grad-CAM of the one output (what raises the prediction), a picture per image.
    assert all((tmp_path / heatmap).is_file() for heatmap in frame["heatmap"])
    stacked_test = pd.read_parquet(paths.stack / "test.parquet").set_index("id")
    ids = frame["image"].str.removesuffix(".png")
    # What submit writes: the stacked value clipped to regression.range.
    np.testing.assert_allclose(frame["prediction"], stacked_test.loc[ids, "prediction"].clip(*RANGE), atol=1e-4)


@pytest.mark.slow
def test_report_shows_predicted_against_true_and_the_largest_errors(stacked) -> None:
    cfg, paths, *_ = stacked
    page = report.run(cfg, paths).read_text()
    assert "Predicted against true" in page and "Largest errors" in page
    oof = pd.read_parquet(paths.stack / "oof.parquet").set_index("id")
    folds_csv = pd.read_csv(paths.folds, dtype=str).set_index("id")
    error = (oof["prediction"] - folds_csv.loc[oof.index, "label"].astype(float)).abs()
    worst = error.idxmax()
    assert worst in page.split("Largest errors", 1)[1]
