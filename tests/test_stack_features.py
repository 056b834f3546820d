"""Table columns in the stack (``stack.features``): the encoder and group features, the leak
test through the fold structure, the stage with and without the columns, and bad tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from foldstack.core import metrics
from foldstack.core.config import ConfigError, StackFeatures
from foldstack.core.errors import DataError
from foldstack.level2 import candidates, selection
from foldstack.level2.columns import TableEncoder, group_features
from foldstack.core.paths import Paths
from foldstack.stages import download, folds, predict, stack
from competitions import COMPETITIONS
from test_competitions import tiny_pipeline
from test_stack import FAST_LIGHTGBM, config, fold_of, write_pipeline

AUC = metrics.get("roc_auc")


def weak_binary(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    """Two weak models' probabilities ``(n, 2, 2)`` and binary targets."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p1 = 1 / (1 + np.exp(-(rng.normal(size=(n, 2)) + 0.3 * (2 * y - 1)[:, None])))
    return np.stack([1 - p1, p1], axis=2), y, rng


def spec(**fields) -> StackFeatures:
    return StackFeatures(**fields)


def with_features(name: str, features: StackFeatures, **overrides):
    cfg = config(task="binary", metric="roc_auc", stack={"lightgbm": FAST_LIGHTGBM, "features": features.model_dump()},
                 **overrides)
    return candidates.build(f"{name}+features", cfg)


@pytest.mark.parametrize("name", ["logistic", "lightgbm", "lightgbm_summary"])
def test_a_column_with_signal_lifts_the_stacker_and_one_without_costs_little(name: str) -> None:
    X, y, rng = weak_binary(600, seed=4)
    table = pd.DataFrame({"age": y * 1.5 + rng.normal(size=len(y)), "noise": rng.normal(size=len(y))})
    fold = fold_of(len(y))
    plain = selection.cross_validate(candidates.build(name, config(task="binary", metric="roc_auc",
                                                                       stack={"lightgbm": FAST_LIGHTGBM})),
                                     X, y, fold, AUC).fold_scores.mean()
    signal = selection.cross_validate(with_features(name, spec(columns=["age"])), X, y, fold, AUC,
                                      table=table).fold_scores.mean()
    noise = selection.cross_validate(with_features(name, spec(columns=["noise"])), X, y, fold, AUC,
                                     table=table).fold_scores.mean()
    assert signal > plain + 0.1
    assert noise > plain - 0.03


def grouped_label_leak(n_groups: int = 120, per_group: int = 5, seed: int = 2):
    """Uninformative scores; a label drawn per group (a patient), constant within it; groups kept
    within folds (a grouped split); and a categorical column naming the group."""
    rng = np.random.default_rng(seed)
    group_label = rng.integers(0, 2, n_groups)
    groups = np.repeat(np.arange(n_groups), per_group)
    y = group_label[groups]
    p1 = rng.random((len(y), 2))
    X = np.stack([1 - p1, p1], axis=2)
    fold = groups % 5
    table = pd.DataFrame({"patient": [f"p{g}" for g in groups]})
    return X, y, fold, table


@pytest.mark.parametrize("name", ["logistic", "lightgbm"])
def test_a_column_built_from_the_label_through_the_folds_scores_at_chance(name: str) -> None:
    # The patient column is the label through the fold structure: each patient's rows share a
    # label, and a patient's rows sit in one fold. Target-encoded on every row it would hand each
    # held-out row its own label; encoded inside each fold, a held-out patient is unknown.
    X, y, fold, table = grouped_label_leak()
    estimator = with_features(name, spec(categorical=["patient"]))

    result = selection.cross_validate(estimator, X, y, fold, AUC, table=table)

    # 600 rows: a leak-free fold-mean AUC lies within 0.5 +/- 0.08 (about 3 sd).
    assert abs(result.fold_scores.mean() - 0.5) < 0.08


def test_the_same_column_encoded_outside_the_folds_leaks() -> None:
    # What the test above guards against: the encoder fitted once on every row, then the stacker
    # cross-validated on its output, scores far above chance.
    X, y, fold, table = grouped_label_leak()
    encoded = TableEncoder(spec(categorical=["patient"])).fit_transform(X, table, y)
    leaked = pd.DataFrame({"patient_code": encoded[:, 0]})
    estimator = with_features("logistic", spec(columns=["patient_code"]))

    result = selection.cross_validate(estimator, X, y, fold, AUC, table=leaked)

    assert result.fold_scores.mean() > 0.8


def test_group_features_are_per_group_ranks_zscores_means_and_counts() -> None:
    X = np.stack([1 - np.array([[0.1], [0.3], [0.2], [0.9]]), np.array([[0.1], [0.3], [0.2], [0.9]])], axis=2)
    X = X.reshape(4, 1, 2)
    table = pd.DataFrame({"age": [10.0, 30.0, 50.0, np.nan], "patient": ["a", "a", "a", "b"]})
    features = group_features(spec(columns=["age"], group="patient", group_features=["rank", "zscore", "mean", "count"]),
                              X, table)

    assert features["group_count"].tolist() == [3, 3, 3, 1]
    np.testing.assert_allclose(features["group_rank_model0_class1"], [1 / 3, 1.0, 2 / 3, 1.0])
    np.testing.assert_allclose(features["group_mean_age"][:3], [30.0, 30.0, 30.0])
    np.testing.assert_allclose(features["group_zscore_age"][:3], [-1.0, 0.0, 1.0])
    np.testing.assert_allclose(features["group_zscore_model0_class1"][3], 0.0)  # a group of one


def test_test_rows_group_features_come_from_the_test_rows_of_their_group() -> None:
    encoder_spec = spec(group="patient", group_features=["zscore"])
    X = np.array([[[0.8, 0.2]], [[0.4, 0.6]]])
    alone = group_features(encoder_spec, X[:1], pd.DataFrame({"patient": ["a"]}))
    together = group_features(encoder_spec, X, pd.DataFrame({"patient": ["a", "a"]}))
    assert alone.iloc[0, 0] == 0.0 and together.iloc[0, 0] < 0.0


def test_missing_numbers_stay_missing_for_lightgbm_and_are_imputed_with_an_indicator_for_logistic() -> None:
    X, y, rng = weak_binary(40, seed=1)
    ages = rng.normal(size=40)
    ages[::4] = np.nan
    table = pd.DataFrame({"age": ages})
    kept = TableEncoder(spec(columns=["age"])).fit_transform(X, table, y)
    imputed = TableEncoder(spec(columns=["age"]), impute=True).fit_transform(X, table, y)
    assert np.isnan(kept[::4, 0]).all() and kept.shape[1] == 1
    assert not np.isnan(imputed).any() and imputed.shape[1] == 2  # the value and its missing indicator
    assert len(np.unique(imputed[::4, 1])) == 1 and imputed[0, 1] != imputed[1, 1]


def test_a_category_unseen_at_test_time_is_encoded_as_unknown() -> None:
    X, y, _ = weak_binary(60, seed=3)
    table = pd.DataFrame({"site": np.where(y == 1, "head", "torso")})
    estimator = with_features("lightgbm", spec(categorical=["site"])).fit(X, y, table)

    proba = estimator.predict_proba(X[:3], pd.DataFrame({"site": ["nowhere", "head", np.nan]}))

    assert proba.shape == (3, 2) and np.isfinite(proba).all()


def test_a_stacker_given_features_needs_the_table_and_a_blender_takes_none() -> None:
    X, y, _ = weak_binary(30, seed=0)
    with pytest.raises(ValueError, match="table"):
        with_features("logistic", spec(columns=["age"])).fit(X, y)
    with pytest.raises(ValueError, match="takes no table"):
        candidates.build("mean", config()).fit(X, y, pd.DataFrame({"age": np.zeros(30)}))


def test_config_checks_features_and_the_forced_name() -> None:
    with pytest.raises(ConfigError, match="group column"):
        config(stack={"features": {"columns": ["age"], "group_features": ["rank"]}})
    with pytest.raises(ConfigError, match="needs stack.features"):
        config(stack={"force": "lightgbm+features"})
    with pytest.raises(ConfigError, match="group_features"):
        config(stack={"features": {"group": "patient", "group_features": ["median"]}})
    assert config(stack={"force": "lightgbm+features", "features": {"columns": ["age"]}}).stack.force == "lightgbm+features"


# --- the stage ------------------------------------------------------------------------------------

FEATURES = {"columns": ["age", "site"], "categorical": ["site"], "group": "patient",
            "group_features": ["rank", "count"]}


def with_tables(tmp_path: Path, **stack_settings):
    """A binary pipeline's files (test_stack.write_pipeline) with a train table and a test table
    holding age (signal), site (a category) and patient (a group)."""
    cfg, paths = write_pipeline(tmp_path, "binary", data={"source": {"type": "embedded", "dataset": "digits"},
                                                          "solution": "solution.csv", "test_csv": "test.csv"},
                                stack={"lightgbm": FAST_LIGHTGBM, "features": FEATURES, **stack_settings})
    folds = pd.read_csv(paths.folds, dtype=str)
    solution = pd.read_csv(paths.data / "solution.csv", dtype=str)
    rng = np.random.default_rng(0)

    def table(ids, labels) -> pd.DataFrame:
        y = (np.asarray(labels) == "1").astype(float)
        age = np.round(40 + 15 * y + rng.normal(scale=5, size=len(ids)), 1).astype(str)
        age[::7] = ""  # missing ages
        return pd.DataFrame({"id": ids, "age": age, "site": rng.choice(["head", "torso", "leg"], len(ids)),
                             "patient": [f"p{i % 40}" for i in range(len(ids))]})

    table(folds["id"], folds["label"]).to_csv(paths.data / "train.csv", index=False)
    table(solution["id"], solution["label"]).assign(site="arm").to_csv(paths.data / "test.csv", index=False)
    return cfg, paths


def test_the_stage_scores_each_candidate_with_and_without_the_columns(tmp_path: Path, capsys) -> None:
    cfg, paths = with_tables(tmp_path, candidates=["mean", "logistic", "lightgbm"])

    board = stack.run(cfg, paths).set_index("candidate")

    assert sorted(board.index) == ["lightgbm", "lightgbm+features", "logistic", "logistic+features", "mean"]
    assert board.loc["logistic+features", "cv_mean"] > board.loc["logistic", "cv_mean"]
    chosen = json.loads((paths.stack / "chosen.json").read_text())
    assert chosen["name"].endswith("+features")
    written = pd.read_parquet(paths.stack / "test.parquet")
    assert len(written) == 30 and np.isfinite(written[["0", "1"]].to_numpy()).all()

    # Unchanged OOF files: the saved stacker is applied to the test rows with their table.
    (paths.stack / "test.parquet").unlink()
    stack.run(cfg, paths)
    assert "applied the saved" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_parquet(paths.stack / "test.parquet"), written)


def test_a_changed_train_table_runs_the_cv_again(tmp_path: Path, capsys) -> None:
    cfg, paths = with_tables(tmp_path, candidates=["logistic"])
    stack.run(cfg, paths)
    train = pd.read_csv(paths.data / "train.csv", dtype=str)
    train.assign(age="50").to_csv(paths.data / "train.csv", index=False)
    capsys.readouterr()

    stack.run(cfg, paths)

    assert "Stacking leaderboard" in capsys.readouterr().out


@pytest.mark.parametrize(("split", "change", "message"), [
    ("train.csv", lambda t: t.drop(columns="age"), r"train.csv: missing column 'age'"),
    ("test.csv", lambda t: t.drop(columns="patient"), r"test.csv: missing column 'patient'"),
    ("train.csv", lambda t: t.assign(age=t["age"].where(t.index != 3, "forty")),
     r"train.csv: row 5 \(id 'img0003'\): column 'age' holds 'forty', not a number"),
    ("train.csv", lambda t: t.drop(index=2), r"train.csv: no row for id 'img0002'"),
])
def test_bad_tables_are_one_line_naming_file_row_and_column(tmp_path: Path, split, change, message: str) -> None:
    cfg, paths = with_tables(tmp_path, candidates=["logistic"])
    change(pd.read_csv(paths.data / split, dtype=str, keep_default_na=False)).to_csv(paths.data / split, index=False)
    with pytest.raises(DataError, match=message) as error:
        stack.run(cfg, paths)
    assert "\n" not in str(error.value)


def test_siim_isic_stacks_its_metadata_grouped_by_patient(tmp_path: Path) -> None:
    # The pipeline as written (its stack.features), on the fixture laid out as the competition
    # ships it; the base model's OOF and test files stand in for a trained one.
    slug = "siim-isic-melanoma-classification"
    fixture = COMPETITIONS[slug].build(tmp_path / "fixture")
    cfg = tiny_pipeline(slug, fixture.public)
    assert cfg.stack.features.group == "patient_id" and "age_approx" in cfg.stack.features.numeric
    paths = Paths.for_pipeline(cfg.name, tmp_path / "run")
    download.run(cfg, paths)
    table = folds.run(cfg, paths)
    test_ids = pd.read_csv(fixture.public / "test.csv", dtype=str)["image_name"]
    rng = np.random.default_rng(0)
    for split, ids, fold in (("oof", table["id"], table["fold"]), ("test", test_ids, None)):
        p = rng.random(len(ids))
        frame = pd.DataFrame({"id": ids, "0": 1 - p, "1": p}).assign(**({} if fold is None else {"fold": fold.to_numpy()}))
        (getattr(paths, split)).mkdir(parents=True, exist_ok=True)
        frame.to_parquet(getattr(paths, split) / "tiny.parquet", index=False)

    board = stack.run(cfg, paths)

    assert {"logistic+features", "lightgbm+features", "logistic", "lightgbm"} <= set(board["candidate"])
    written = pd.read_parquet(paths.stack / "test.parquet")
    assert sorted(written["id"]) == sorted(test_ids)


def test_predict_images_refuses_a_stack_fitted_with_table_columns(tmp_path: Path) -> None:
    cfg, paths = with_tables(tmp_path, candidates=["logistic"], force="logistic+features")
    stack.run(cfg, paths)
    folder = tmp_path / "new"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")

    with pytest.raises(DataError, match=r"chosen.json: logistic\+features stacks table columns") as error:
        predict.images(cfg, paths, folder, tmp_path / "out.csv")

    assert "\n" not in str(error.value) and not (tmp_path / "out.csv").exists()


# Logistic regression needs class probabilities: no ordinal scores for it.
@pytest.mark.parametrize(("shape", "stacker"), [(shape, stacker) for stacker in ("logistic", "lightgbm")
                                                for shape in ("multiclass", "shared", "multilabel", "ordinal")
                                                if (shape, stacker) != ("ordinal", "logistic")])
def test_every_layout_takes_the_table(shape: str, stacker: str) -> None:
    rng = np.random.default_rng(0)
    n, n_classes = 80, {"shared": 12, "ordinal": 1}.get(shape, 3)
    X = rng.dirichlet(np.ones(n_classes), size=(n, 2)) if shape != "ordinal" else rng.random((n, 2, 1)) * 3
    y = {"multilabel": (rng.random((n, 3)) < 0.4).astype(int), "ordinal": rng.integers(0, 4, n)}.get(
        shape, rng.integers(0, n_classes, n))
    table = pd.DataFrame({"age": rng.normal(size=n), "site": rng.choice(["a", "b", None], n),
                          "patient": rng.choice(list("pqrs"), n)})
    features = spec(columns=["age"], categorical=["site"], group="patient", group_features=["rank", "count"])
    estimator = with_features(stacker, features).set_params(
        **({"wide_max_classes": 10} if shape == "shared" else {})).fit(X, y, table)
    assert estimator.predict_proba(X[:5], table[:5]).shape == (5, 3 if shape == "multilabel" else n_classes)
