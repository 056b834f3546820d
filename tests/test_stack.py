"""Level two: every registered candidate against the estimator contract and on synthetic OOF
data, the leak test, the input checks, and the stack + submit stages end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from foldstack import level2
from foldstack.contracts import folds_file, predictions, stack_output
from foldstack.core import metrics
from foldstack.core.config import ConfigError, PipelineConfig
from foldstack.core.errors import DataError
from foldstack.core.paths import Paths
from foldstack.data.labels import Classes, join_labels
from foldstack.level2 import LightGBMStacker, decision, selection
from foldstack.pipeline import load_pipeline, parse_pipeline
from foldstack.stages import stack, submit

FAST_LIGHTGBM = {"num_threads": 1}
FOLDS = 5


def synthetic(n: int = 300, n_models: int = 2, n_classes: int = 3, signal: tuple[float, ...] = (1.0, 2.0),
              multilabel: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Base-model probabilities ``(n, n_models, n_classes)`` whose m-th model is as good as
    ``signal[m]`` (0: noise), and the targets."""
    rng = np.random.default_rng(seed)
    strength = np.asarray(signal)[None, :, None]  # one factor per model
    if multilabel:
        y = (rng.random((n, n_classes)) < 0.4).astype(int)
        logits = rng.normal(size=(n, n_models, n_classes)) + strength * (2 * y - 1)[:, None, :]
        return 1 / (1 + np.exp(-logits)), y
    y = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_models, n_classes)) + strength * np.eye(n_classes)[y][:, None, :]
    proba = np.exp(logits)
    return proba / proba.sum(axis=2, keepdims=True), y


def config(**overrides) -> PipelineConfig:
    raw = {
        "name": "tiny", "task": "multiclass", "metric": "accuracy",
        "data": {"source": {"type": "embedded", "dataset": "digits"}, "solution": "solution.csv"},
        "models": [{"name": "weak", "backbone": "mobilenet_v2"}, {"name": "strong", "backbone": "mobilenet_v2"}],
        "stack": {"lightgbm": FAST_LIGHTGBM},
    }
    return parse_pipeline({**raw, **overrides})


def build(name: str, **overrides) -> level2.Level2Estimator:
    return level2.get(name).build(config(**overrides))


def fold_of(n: int) -> np.ndarray:
    return np.arange(n) % FOLDS


# --- the estimator contract, over every registered candidate -----------------------------------

#: Every candidate of class probabilities (the classification tasks'); those of one number per
#: model have their conformance tests in test_ordinal.py and test_regression.py.
ALL = [name for name in level2.names() if level2.get(name).combines("multiclass")]


@pytest.mark.parametrize("name", ALL)
def test_clone_gives_an_unfitted_copy_with_the_same_params(name: str) -> None:
    estimator = build(name)
    copy = clone(estimator)
    assert copy is not estimator and copy.get_params() == estimator.get_params()


@pytest.mark.parametrize("name", ALL)
def test_fit_returns_self_and_predicts_probabilities(name: str) -> None:
    X, y = synthetic(n=100)
    estimator = build(name)
    assert estimator.fit(X, y) is estimator
    proba = estimator.predict_proba(X)
    assert proba.shape == (100, 3) and ((proba >= 0) & (proba <= 1)).all()
    assert estimator.predict(X).shape == (100,)


@pytest.mark.parametrize("name", ALL)
def test_predict_before_fit_says_to_call_fit(name: str) -> None:
    with pytest.raises(NotFittedError, match="Call 'fit'"):
        build(name).predict_proba(synthetic(n=10)[0])


@pytest.mark.parametrize("name", ALL)
def test_wrong_shapes_raise_value_error(name: str) -> None:
    X, y = synthetic(n=60)
    with pytest.raises(ValueError, match="must be 3-D"):
        build(name).fit(X.reshape(60, -1), y)
    with pytest.raises(ValueError, match="y has 59 rows but X has 60"):
        build(name).fit(X, y[:-1])
    with pytest.raises(ValueError, match="class indices 0..2"):
        build(name).fit(X, y + 1)
    fitted = build(name).fit(X, y)
    with pytest.raises(ValueError, match="X has 1 models x 3 classes; fit saw 2 models x 3 classes"):
        fitted.predict_proba(X[:, :1])


@pytest.mark.parametrize("name", ALL)
def test_multilabel_gives_one_probability_per_class(name: str) -> None:
    X, y = synthetic(n=120, multilabel=True)
    estimator = build(name, task="multilabel").fit(X, y)
    assert estimator.predict_proba(X).shape == (120, 3)
    assert set(np.unique(estimator.predict(X))) <= {0, 1}


# --- each candidate on synthetic data ----------------------------------------------------------


def test_best_single_picks_the_better_model_in_the_metric_direction() -> None:
    X, y = synthetic(signal=(2.0, 0.5))
    assert level2.BestSingle(metric="accuracy").fit(X, y).best_ == 0
    assert level2.BestSingle(metric="log_loss").fit(X, y).best_ == 0


def test_mean_is_the_mean_over_models() -> None:
    X, y = synthetic(n=50)
    np.testing.assert_allclose(level2.MeanBlend().fit(X, y).predict_proba(X), X.mean(axis=1))


def test_weighted_mean_weights_are_a_convex_combination_that_drops_noise() -> None:
    X, y = synthetic(n_models=3, signal=(2.0, 0.0, 1.0))
    weights = level2.WeightedMeanBlend().fit(X, y).weights_
    assert (weights >= 0).all() and weights.sum() == pytest.approx(1.0)
    assert weights[1] < 0.1 and weights[0] > weights[2]


def test_rank_average_ignores_calibration() -> None:
    X, y = synthetic(n=80)
    squashed = X.copy()
    squashed[:, 0] = squashed[:, 0] ** 3  # same order, different calibration
    blend = level2.RankAverage().fit(X, y)
    np.testing.assert_allclose(blend.predict_proba(squashed), blend.predict_proba(X))


@pytest.mark.parametrize("name", ["weighted_mean", "logistic", "lightgbm", "lightgbm_summary"])
def test_learned_candidates_beat_the_weaker_model(name: str) -> None:
    X, y = synthetic(n=400, signal=(0.5, 1.5))
    result = selection.cross_validate(build(name), X, y, fold_of(400), metrics.get("accuracy"))
    weak = metrics.get("accuracy")(y, X[:, 0])
    assert result.fold_scores.mean() > weak + 0.1


@pytest.mark.parametrize("stacker", [level2.LogisticStacker(wide_max_classes=2),
                                     LightGBMStacker(params=FAST_LIGHTGBM, wide_max_classes=2),
                                     LightGBMStacker(params=FAST_LIGHTGBM, summary_features=True, wide_max_classes=2)])
@pytest.mark.parametrize("multilabel", [False, True])
def test_shared_layout_for_many_classes_learns_and_keeps_rows_normalised(stacker, multilabel: bool) -> None:
    # Forced on 3 classes to stay fast; it is the default above 10 classes (e.g. 120 dog breeds).
    X, y = synthetic(n=400, signal=(0.5, 1.5), multilabel=multilabel)
    metric = metrics.get("roc_auc" if multilabel else "accuracy")
    result = selection.cross_validate(stacker, X, y, fold_of(400), metric)
    assert all(model.shared_ for model in result.models)
    assert result.fold_scores.mean() > metric(y, X[:, 0]) + 0.05
    if not multilabel:
        np.testing.assert_allclose(result.oof.sum(axis=1), 1.0)


def test_logistic_gives_probability_zero_to_a_class_missing_from_training() -> None:
    X, y = synthetic(n=120)
    keep = y != 2
    proba = level2.LogisticStacker().fit(X[keep], y[keep]).predict_proba(X)
    assert proba.shape == (120, 3) and (proba[:, 2] == 0).all()


def test_lightgbm_is_deterministic_and_takes_overrides() -> None:
    X, y = synthetic(n=200)
    params = {"num_threads": 1, "num_leaves": 3}
    first = LightGBMStacker(params=params, seed=7).fit(X, y)
    second = clone(first).fit(X, y)
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))
    assert first.boosters_[0].params["num_leaves"] == 3


def test_lightgbm_early_stops_on_noise() -> None:
    X, y = synthetic(n=200, signal=(0.0, 0.0))
    booster = LightGBMStacker(params=FAST_LIGHTGBM).fit(X, y).boosters_[0]
    assert booster.current_iteration() < 100


def test_lightgbm_binary_uses_one_binary_model() -> None:
    X, y = synthetic(n=200, n_classes=2)
    stacker = LightGBMStacker(params=FAST_LIGHTGBM).fit(X, y)
    assert len(stacker.boosters_) == 1 and stacker.boosters_[0].params["objective"] == "binary"
    np.testing.assert_allclose(stacker.predict_proba(X).sum(axis=1), 1.0)


def test_lightgbm_multilabel_uses_one_model_per_class() -> None:
    X, y = synthetic(n=200, multilabel=True)
    y[:, 2] = 0  # a class absent from training gets a constant, not a crash
    stacker = LightGBMStacker(params=FAST_LIGHTGBM).fit(X, y)
    assert len(stacker.boosters_) == 3 and stacker.boosters_[2] == 0.0


def test_lightgbm_samples_shared_negatives_and_stays_calibrated() -> None:
    # 12 classes: the shared layout, 11 negatives per sample; 1,000 of the 5,280 training
    # negatives keeps about a fifth. Without the odds correction CV log loss is ~0.15 worse here.
    X, y = synthetic(n=600, n_classes=12, signal=(0.8, 1.6))
    log_loss = metrics.get("log_loss")
    full, sampled = (selection.cross_validate(LightGBMStacker(params=FAST_LIGHTGBM, max_negatives=cap), X, y,
                                          fold_of(600), log_loss) for cap in (None, 1000))
    assert all(model.negative_rate_ == pytest.approx(1000 / 5280) for model in sampled.models)
    assert sampled.fold_scores.mean() < full.fold_scores.mean() + 0.03
    np.testing.assert_allclose(sampled.oof.sum(axis=1), 1.0)


def test_lightgbm_with_no_more_negatives_than_the_cap_is_the_unsampled_fit() -> None:
    X, y = synthetic(n=200, n_classes=12)
    capped = LightGBMStacker(params=FAST_LIGHTGBM, max_negatives=200 * 11).fit(X, y)
    assert capped.negative_rate_ == 1.0
    np.testing.assert_array_equal(capped.predict_proba(X),
                                  LightGBMStacker(params=FAST_LIGHTGBM).fit(X, y).predict_proba(X))


def test_lightgbm_max_negatives_comes_from_the_config() -> None:
    assert build("lightgbm").max_negatives == 200_000
    assert build("lightgbm_summary", stack={"lightgbm_max_negatives": None}).max_negatives is None


def test_summary_features_are_entropy_top_probability_and_agreement() -> None:
    X = np.array([[[0.5, 0.5], [0.9, 0.1]], [[1.0, 0.0], [1.0, 0.0]]])
    features = level2.summary_features(X, multilabel=False)
    assert features.shape == (2, 5)
    np.testing.assert_allclose(features[:, 0], [np.log(2), 0.0], atol=1e-9)  # entropy of model 0
    np.testing.assert_allclose(features[:, 2:4], [[0.5, 0.9], [1.0, 1.0]])  # top probabilities
    np.testing.assert_allclose(features[:, 4], [1.0, 1.0])  # both pick class 0 in both rows


# --- the leak test ------------------------------------------------------------------------------


def noise(n: int = 600, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """OOF features without signal: random probabilities and random binary labels."""
    rng = np.random.default_rng(seed)
    p1 = rng.random((n, 2))
    return np.stack([1 - p1, p1], axis=2), rng.integers(0, 2, n)


OVERFITTER = {"num_threads": 1, "early_stopping_round": 0, "num_iterations": 200, "num_leaves": 31,
              "min_data_in_leaf": 2, "lambda_l2": 0.0}


@pytest.mark.parametrize("name", [*ALL, "overfitter"])
def test_meta_model_cv_stays_at_chance_on_features_without_signal(name: str) -> None:
    X, y = noise()
    estimator = LightGBMStacker(params=OVERFITTER) if name == "overfitter" else build(name, metric="roc_auc")
    result = selection.cross_validate(estimator, X, y, fold_of(len(y)), metrics.get("roc_auc"))
    # 600 rows: the fold-mean AUC of a leak-free model lies within 0.5 +/- 0.08 (about 3 sd).
    assert abs(result.fold_scores.mean() - 0.5) < 0.08


def test_the_leak_test_can_fail_a_meta_model_that_saw_the_fold() -> None:
    # The same over-fitting stacker, trained on all rows and scored on each fold in turn.
    X, y = noise()
    fold = fold_of(len(y))
    leaky = LightGBMStacker(params=OVERFITTER).fit(X, y)
    scores = [metrics.get("roc_auc")(y[fold == k], leaky.predict_proba(X[fold == k])) for k in range(FOLDS)]
    assert np.mean(scores) > 0.8


def test_cv_never_fits_on_the_fold_it_scores() -> None:
    X, y = synthetic(n=50)
    fold = fold_of(50)
    seen = []

    class Spy(level2.MeanBlend):
        def _fit(self, X, y):
            seen.append(len(X))

    selection.cross_validate(Spy(), X, y, fold, metrics.get("accuracy"))
    assert seen == [40] * FOLDS


@pytest.mark.parametrize("n_folds", [2, 4])
def test_a_decision_rule_for_fold_k_is_fitted_on_predictions_of_models_that_never_saw_fold_k(n_folds: int) -> None:
    """The rule scored on fold k (thresholds, cut points) is fitted on level-two predictions of
    the other folds' rows; those predictions must come from level-two models that saw no row of
    fold k either. The candidate's own OOF would not do: fold j's rows were predicted by a model
    fitted on every other fold, fold k included. Here each row's fold is its one label and every
    model predicts which folds it was fitted on (a bit per fold), so a rule that records what it
    is fitted on can tell. With two folds, the one other fold is split in two."""
    n = 24 * n_folds
    fold = np.arange(n) % n_folds
    X = np.repeat(fold.astype(np.float64)[:, None, None], n_folds, axis=2)
    y = np.eye(n_folds, dtype=int)[fold]

    class FoldsSeen(level2.MeanBlend):
        def _fit(self, X, y):
            self.seen_ = np.unique(X[:, 0, 0]).astype(int)

        def _predict_proba(self, X):
            return np.full((len(X), X.shape[2]), float(sum(2**k for k in self.seen_)))

    fits = []

    def record(y, output, metric, modes, n_classes):
        fits.append((np.flatnonzero(y.sum(axis=0) == 0), output[:, 0].astype(int)))
        return {mode: np.full(n_classes, 0.5) for mode in modes}

    rule = decision.Rule("spy", ("fitted",), lambda n_classes: np.full(n_classes, 0.5), record, per_class=True)
    result = selection.cross_validate(FoldsSeen(), X, y, fold, metrics.get("f1_micro"), rule=(rule, "fitted"))
    assert result.decision.mode == "fitted"
    *nested, (left_out, _) = fits
    assert len(nested) == n_folds and not len(left_out)  # one fit per fold, then one on every row
    for absent, masks in nested:
        assert len(absent) == 1, absent  # the fold it scores is the one its rows leave out
        assert not (masks & 2 ** absent[0]).any(), f"fold {absent[0]}: fitted on models that saw it"
        assert (masks > 0).all()


# --- choosing candidates ------------------------------------------------------------------------


def test_rank_average_is_a_candidate_only_for_ranking_metrics() -> None:
    assert "rank_average" not in selection.candidate_names(config(), metrics.get("accuracy"))
    assert "rank_average" in selection.candidate_names(config(metric="roc_auc"), metrics.get("roc_auc"))


def test_candidates_restrict_and_force_adds() -> None:
    cfg = config(stack={"candidates": ["mean", "logistic"], "force": "logistic"})
    assert selection.candidate_names(cfg, metrics.get("accuracy")) == ["mean", "logistic"]


def test_forcing_a_candidate_that_does_not_apply_is_an_error() -> None:
    with pytest.raises(selection.StackError, match="candidate 'rank_average' does not apply to metric 'accuracy'"):
        selection.candidate_names(config(stack={"force": "rank_average"}), metrics.get("accuracy"))


def test_config_rejects_unknown_candidates(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nmetric: accuracy\ndata: {source: {type: embedded, dataset: digits}}\n"
                    "models: [{name: m, backbone: mobilenet_v2}]\nstack: {candidates: [mean, stacky]}\n")
    with pytest.raises(ConfigError, match=r"p.yaml: stack.candidates = \['mean', 'stacky'\]: .*unknown candidate 'stacky'; known: best_single, mean"):
        load_pipeline(path)


def test_config_rejects_force_outside_candidates() -> None:
    with pytest.raises(ValueError, match="force 'lightgbm' is not among candidates: mean"):
        config(stack={"candidates": ["mean"], "force": "lightgbm"})


def test_leaderboard_sorts_by_the_metric_direction_and_marks_the_choice() -> None:
    X, y = synthetic(signal=(0.3, 2.0))
    log_loss = metrics.get("log_loss")
    results = {name: selection.cross_validate(build(name), X, y, fold_of(300), log_loss)
               for name in ["best_single", "mean"]}
    board = selection.leaderboard(results, log_loss)
    assert board["cv_mean"].is_monotonic_increasing
    assert list(board.columns) == ["candidate", "cv_mean", "cv_std", *[f"fold_{k}" for k in range(FOLDS)], "chosen"]
    assert board.loc[board["chosen"], "candidate"].item() == board["candidate"].iloc[0]
    forced = selection.leaderboard(results, log_loss, force="mean")
    assert forced.loc[forced["chosen"], "candidate"].item() == "mean"


# --- a tiny pipeline on disk --------------------------------------------------------------------

TASKS = {
    # task: (metric, submission format, class names)
    "multiclass": ("accuracy", "label", ["cat", "dog", "owl"]),
    "binary": ("roc_auc", "binary", ["0", "1"]),
    "multilabel": ("f1_micro", "multilabel", ["cat", "dog", "owl"]),
}


def write_pipeline(root: Path, task: str, n: int = 150, n_test: int = 30, **overrides) -> tuple[PipelineConfig, Paths]:
    """folds.csv, two models' OOF and test parquets (rows and columns shuffled), a sample
    submission and a solution, as the earlier stages would leave them."""
    metric, fmt, classes = TASKS[task]
    multilabel = task == "multilabel"
    cfg = config(task=task, metric=metric, submission={"format": fmt}, **overrides)
    paths = Paths.for_pipeline(cfg.name, root)
    X, y = synthetic(n=n + n_test, n_classes=len(classes), signal=(0.8, 1.6), multilabel=multilabel, seed=3)
    names = np.array(classes)
    # folds.csv joins a multilabel row's classes as every stage reads them; the solution is as shipped.
    labels = [" ".join(names[row == 1]) for row in y] if multilabel else list(names[y])
    internal = [join_labels(names[row == 1]) for row in y] if multilabel else labels
    ids = [f"img{i:04d}" for i in range(n + n_test)]
    folds = pd.DataFrame({"id": ids[:n], "label": internal[:n], "fold": fold_of(n)})
    folds_file.write(paths.folds, folds, Classes.from_labels(folds["label"], task), task)
    for m, model in enumerate(cfg.models):
        shuffled = list(reversed(classes))
        oof = pd.DataFrame(X[:n, m], columns=classes).assign(id=ids[:n], fold=folds["fold"])
        _write_parquet(paths.oof / f"{model.name}.parquet", oof[["fold", *shuffled, "id"]].sample(frac=1, random_state=m))
        test = pd.DataFrame(X[n:, m], columns=classes).assign(id=ids[n:])
        _write_parquet(paths.test / f"{model.name}.parquet", test[["id", *shuffled]].sample(frac=1, random_state=m))
    paths.data.mkdir(parents=True)
    value_columns = {"label": ["label"], "binary": ["target"], "multilabel": ["tags"]}[fmt]
    pd.DataFrame({"id": ids[n:], **{c: "x" for c in value_columns}}).to_csv(paths.data / "sample_submission.csv", index=False)
    pd.DataFrame({"id": ids[n:], "label": labels[n:]}).to_csv(paths.data / "solution.csv", index=False)
    return cfg, paths


def _write_parquet(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)


@pytest.mark.parametrize("task", list(TASKS))
def test_stack_and_submit_end_to_end(task: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    candidates = None if task == "multiclass" else ["best_single", "mean", "weighted_mean", "logistic"]
    if task == "binary":
        candidates.append("rank_average")
    cfg, paths = write_pipeline(tmp_path, task, stack={"lightgbm": FAST_LIGHTGBM, "candidates": candidates})

    board = stack.run(cfg, paths)

    expected = candidates or [name for name in ALL if name != "rank_average"]
    assert sorted(board["candidate"]) == sorted(expected)
    assert pd.read_csv(paths.stack / "leaderboard.csv")["candidate"].tolist() == board["candidate"].tolist()
    chosen = json.loads((paths.stack / "chosen.json").read_text())
    best = board.iloc[0]
    assert chosen["name"] == best["candidate"] and chosen["cv_mean"] == pytest.approx(best["cv_mean"])
    assert chosen["metric"] == cfg.metric
    # The stacker's own OOF has the base models' format, so it can be read like one.
    _, _, classes = TASKS[task]
    oof = predictions.read_predictions(paths.stack / "oof.parquet", Classes(tuple(sorted(classes))), extra=("fold",),
                                       expected=folds_file.read(paths.folds, FOLDS).set_index("id").index)
    assert (oof["fold"].to_numpy() == fold_of(150)).all()
    assert (paths.stack / "leaderboard.png").stat().st_size > 0 and (paths.stack / "confusion.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "Stacking leaderboard" in out and f"chosen: {chosen['name']}" in out

    path = submit.run(cfg, paths)

    assert path == paths.submissions / f"tiny-{chosen['name']}-cv{chosen['cv_mean']:.4f}.csv"
    written = pd.read_csv(path, dtype=str, keep_default_na=False)
    sample = pd.read_csv(paths.data / "sample_submission.csv", dtype=str)
    assert list(written.columns) == list(sample.columns) and (written["id"] == sample["id"]).all()
    index = pd.read_csv(paths.submissions / "index.csv")
    assert index["file"].tolist() == [path.name] and not index["local_lb"].isna().any()
    out = capsys.readouterr().out
    assert f"local LB {cfg.metric} {index['local_lb'].iloc[0]:.4f}" in out


def test_forced_candidate_is_written_even_when_it_is_not_best(tmp_path: Path) -> None:
    cfg, paths = write_pipeline(tmp_path, "multiclass", stack={"candidates": ["best_single", "mean"], "force": "best_single"})
    board = stack.run(cfg, paths)
    assert board.loc[board["chosen"], "candidate"].item() == "best_single"
    assert json.loads((paths.stack / "chosen.json").read_text())["forced"] is True


def test_a_rank_average_submission_is_what_cv_scored(tmp_path: Path) -> None:
    """The submitted file holds exactly the chosen candidate's test predictions, and CV scored
    OOF predictions made the same way: no row renormalisation after scoring (a rank average's
    rows do not sum to 1, and renormalising them changed the file after CV)."""
    cfg, paths = write_pipeline(tmp_path, "binary", stack={"candidates": ["rank_average", "mean"],
                                                           "force": "rank_average"})
    board = stack.run(cfg, paths)
    submitted = pd.read_csv(submit.run(cfg, paths), dtype={"id": str}).set_index("id")["target"]
    test = pd.read_parquet(paths.stack / "test.parquet").set_index("id")
    np.testing.assert_allclose(submitted.to_numpy(), test.loc[submitted.index, "1"].to_numpy(), rtol=1e-12)
    oof = pd.read_parquet(paths.stack / "oof.parquet").set_index("id")
    folds = folds_file.read(paths.folds, FOLDS).set_index("id")
    y = Classes(("0", "1")).encode(folds["label"])
    row = board.set_index("candidate").loc["rank_average"]
    for k in range(FOLDS):
        held = (folds["fold"] == k).to_numpy()
        scored = metrics.get("roc_auc")(y[held], oof.loc[folds.index[held], ["0", "1"]].to_numpy())
        assert scored == pytest.approx(row[f"fold_{k}"], abs=1e-12)


def test_single_label_outputs_are_scored_and_written_with_rows_summing_to_one() -> None:
    """Float32 softmax outputs averaged over folds drift from 1; the level-2 output is
    renormalised before CV scores it, so the submission is what was scored."""
    X, y = synthetic(n=100)
    X = X * (1 - 1e-5)
    result = selection.cross_validate(level2.MeanBlend(), X, y, fold_of(100), metrics.get("log_loss"))
    np.testing.assert_allclose(result.oof.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(result.predict_proba(X).sum(axis=1), 1.0, atol=1e-12)
    tags, labels = synthetic(n=100, multilabel=True)
    multilabel = selection.cross_validate(level2.MeanBlend(), tags, labels, fold_of(100), metrics.get("roc_auc"))
    np.testing.assert_allclose(multilabel.oof, tags.mean(axis=1))  # independent classes: untouched


# --- input checks -------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: f.iloc[1:], r"oof/weak.parquet: 1 id\(s\) of .*folds.csv missing, e.g. '"),
    (lambda f: pd.concat([f, f.iloc[:1].assign(id="stranger")]), r"oof/weak.parquet: 1 id\(s\) not in .*folds.csv, e.g. 'stranger'"),
    (lambda f: pd.concat([f, f.iloc[:1]]), r"oof/weak.parquet: id '\w+' appears more than once"),
    (lambda f: f.drop(columns="dog"), r"oof/weak.parquet: missing column\(s\) dog; classes: cat, dog, owl"),
    (lambda f: f.assign(cow=0.0), r"oof/weak.parquet: column\(s\) cow are not classes of folds.csv"),
    (lambda f: f.assign(fold=(f["fold"] + 1) % FOLDS), r"oof/weak.parquet: id '\w+' is in fold \d but .*folds.csv puts it in fold \d"),
    (lambda f: f.assign(cat=np.where(f["id"] == "img0007", 1.5, f["cat"])), r"oof/weak.parquet: id 'img0007', class 'cat': 1.5 is not a probability in \[0, 1\]"),
])
def test_bad_oof_files_name_the_file_and_the_id(tmp_path: Path, change, message: str) -> None:
    cfg, paths = write_pipeline(tmp_path, "multiclass")
    path = paths.oof / "weak.parquet"
    change(pd.read_parquet(path)).to_parquet(path, index=False)
    with pytest.raises(DataError, match=message):
        predictions.load_level_two(cfg, paths)


def test_test_files_must_agree_on_ids(tmp_path: Path) -> None:
    cfg, paths = write_pipeline(tmp_path, "multiclass")
    path = paths.test / "strong.parquet"
    pd.read_parquet(path).iloc[:-1].to_parquet(path, index=False)
    with pytest.raises(DataError, match=r"test/strong.parquet: 1 id\(s\) of .*test/weak.parquet missing"):
        predictions.load_level_two(cfg, paths)


def test_a_label_outside_the_classes_names_the_id(tmp_path: Path) -> None:
    labels = pd.Series(["cat", "emu"], index=pd.Index(["a", "b"], name="id"))
    with pytest.raises(DataError, match="x.csv: id 'b' has label 'emu', which is not a class; classes: cat, dog"):
        Classes(("cat", "dog")).encode(labels, Path("x.csv"))
    with pytest.raises(DataError, match="x.csv: id 'b' has label 'emu', which is not a class"):
        Classes(("cat", "dog"), multilabel=True).encode(labels.replace("emu", "dog|emu"), Path("x.csv"))


def test_missing_oof_file_says_which_stage_to_run(tmp_path: Path) -> None:
    cfg, paths = write_pipeline(tmp_path, "multiclass")
    (paths.oof / "strong.parquet").unlink()
    with pytest.raises(DataError, match="oof/strong.parquet: not found; run the train stage first"):
        predictions.load_level_two(cfg, paths)


# --- the saved level-two model --------------------------------------------------------------------


def test_saved_model_reproduces_the_test_file_and_is_applied_without_cv(tmp_path: Path, capsys) -> None:
    """The chosen candidate, fitted on every OOF row, is saved; it alone gives stack/test.parquet.
    A rerun with the same OOF files only applies it (to new test predictions, and without any
    OOF file, as in a bundle); a changed OOF file runs the CV again."""
    cfg, paths = write_pipeline(tmp_path, "multiclass", stack={"candidates": ["logistic", "mean"],
                                                               "force": "logistic"})
    stack.run(cfg, paths)
    chosen = json.loads((paths.stack / "chosen.json").read_text())
    assert chosen["classes"] == ["cat", "dog", "owl"] and chosen["cv_key"]
    assert (paths.stack / "level2" / "logistic.pkl").is_file()

    def applied_by_the_saved_model() -> None:
        fitted = stack_output.read_model(paths.stack, ("weak", "strong"))
        ids, X = predictions.load_test(paths, fitted.models, fitted.classes)
        written = pd.read_parquet(paths.stack / "test.parquet").set_index("id").loc[ids, list(fitted.classes.names)]
        np.testing.assert_allclose(written.to_numpy(), fitted.predict_proba(X), rtol=0, atol=1e-12)

    applied_by_the_saved_model()
    board = (paths.stack / "leaderboard.csv").read_bytes()

    # New test predictions (other values, fewer rows): applied, no CV.
    for model in cfg.models:
        path = paths.test / f"{model.name}.parquet"
        frame = pd.read_parquet(path).sort_values("id").iloc[5:]
        frame[["cat", "dog", "owl"]] = frame[["owl", "cat", "dog"]].to_numpy()
        frame.to_parquet(path, index=False)
    capsys.readouterr()
    stack.run(cfg, paths)
    out = capsys.readouterr().out
    assert "OOF files unchanged since the last CV; applied the saved logistic to 25 test rows" in out
    assert (paths.stack / "leaderboard.csv").read_bytes() == board
    applied_by_the_saved_model()

    shutil.rmtree(paths.oof)  # a bundle ships no OOF file
    stack.run(cfg, paths)
    assert "no OOF files; applied the saved logistic" in capsys.readouterr().out
    applied_by_the_saved_model()

    cfg, paths = write_pipeline(tmp_path / "again", "multiclass", stack={"candidates": ["logistic", "mean"]})
    stack.run(cfg, paths)
    oof = pd.read_parquet(paths.oof / "weak.parquet")
    oof[["cat", "dog", "owl"]] = oof[["dog", "owl", "cat"]].to_numpy()
    oof.to_parquet(paths.oof / "weak.parquet", index=False)
    capsys.readouterr()
    stack.run(cfg, paths)
    assert "Stacking leaderboard" in capsys.readouterr().out  # the CV ran again
    applied_by_the_saved_model()


def test_apply_without_a_saved_model_or_for_other_models_says_what_to_run(tmp_path: Path) -> None:
    cfg, paths = write_pipeline(tmp_path, "multiclass", stack={"candidates": ["mean"]})
    stack.run(cfg, paths)
    (paths.stack / "level2" / "mean.pkl").unlink()
    with pytest.raises(DataError, match=r"level2/mean.pkl: not found; run the stack stage again"):
        stack.apply(cfg, paths)
    stack.run(cfg, paths)  # OOF files here: the CV runs again and saves the model
    other = config(models=[{"name": "weak", "backbone": "mobilenet_v2"}],
                   stack={"candidates": ["mean"]})
    with pytest.raises(DataError, match=r"chosen.json: stacks models weak, strong but the pipeline has weak"):
        stack.apply(other, paths)
