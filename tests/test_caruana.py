"""Caruana's ensemble selection (the ``caruana`` stacking candidate): it optimises the pipeline's
own metric where the log-loss weighted mean cannot, its weights are counts, it never scores below
the best single model on its training rows, and the stack stage scores it like any candidate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_stack import config, fold_of, synthetic, write_pipeline

from foldstack import level2
from foldstack.contracts import predictions
from foldstack.core import metrics
from foldstack.core.config import ConfigError
from foldstack.level2 import BestSingle, CaruanaSelection, WeightedMeanBlend, selection
from foldstack.stages import stack

ACCURACY = metrics.get("accuracy")


def majority_case(sizes: tuple[int, int, int] = (80, 70, 60), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three binary models, each wrong on its own third of the rows; the third model's misses are
    near-certain (probability 1e-4 on the true class), the others' mild (0.3).

    A weighted vote can get every row right (e.g. weights 3:3:2: no third alone outvotes the
    rest), and no single model nor the plain mean can (the mean loses the third group). Log loss
    punishes the confident misses so hard that SLSQP all but drops the third model, and then the
    first two groups are a tie between two models that each miss one of them.
    """
    rng = np.random.default_rng(seed)
    true_class_proba = [(0.3, 0.7, 0.7), (0.7, 0.3, 0.7), (0.7, 0.7, 1e-4)]
    X, y = [], []
    for size, p in zip(sizes, true_class_proba):
        labels = rng.integers(0, 2, size)
        p = np.asarray(p) + rng.uniform(-0.02, 0.02, (size, 3)) * (np.asarray(p) > 0.01)
        block = np.zeros((size, 3, 2))
        block[np.arange(size), :, labels] = p
        block[np.arange(size), :, 1 - labels] = 1 - p
        X.append(block)
        y.append(labels)
    order = rng.permutation(sum(sizes))  # groups spread over the folds
    return np.concatenate(X)[order], np.concatenate(y)[order]


def test_a_mix_wins_on_accuracy_where_the_log_loss_blend_does_not() -> None:
    X, y = majority_case()
    singles = [ACCURACY(y, X[:, m]) for m in range(3)]
    caruana = CaruanaSelection(metric="accuracy").fit(X, y)
    weighted = WeightedMeanBlend().fit(X, y)

    assert ACCURACY(y, caruana.predict_proba(X)) == 1.0
    assert max(singles) < 0.75 and ACCURACY(y, X.mean(axis=1)) < 0.75
    assert ACCURACY(y, weighted.predict_proba(X)) < 0.75 and weighted.weights_[2] < 0.05
    assert (caruana.weights_ > 0.15).all()  # all three models vote

    # The same by the nested CV the stack stage runs: fitted without each fold, scored on it.
    fold = fold_of(len(y))
    cv = {name: selection.cross_validate(estimator, X, y, fold, ACCURACY).fold_scores.mean()
          for name, estimator in [("caruana", CaruanaSelection(metric="accuracy")), ("weighted_mean", WeightedMeanBlend()),
                                  ("best_single", BestSingle(metric="accuracy"))]}
    assert cv["caruana"] > 0.95 and cv["weighted_mean"] < 0.75 and cv["best_single"] < 0.75


def test_weights_are_counts_over_the_steps_kept() -> None:
    X, y = majority_case()
    caruana = CaruanaSelection(metric="accuracy", iterations=30).fit(X, y)

    assert caruana.counts_.dtype.kind == "i" and caruana.counts_.sum() <= 30
    np.testing.assert_array_equal(caruana.weights_, caruana.counts_ / caruana.counts_.sum())
    assert len(caruana.trajectory_) == 30
    # Cut back to the first step that scored best: as many models as steps up to it.
    assert caruana.counts_.sum() == int(np.argmax(caruana.trajectory_)) + 1
    assert caruana.trajectory_[caruana.counts_.sum() - 1] == ACCURACY(y, caruana.predict_proba(X))


def test_a_model_that_only_hurts_is_never_added() -> None:
    X, y = synthetic(signal=(2.0, 0.0), seed=4)  # model 1 is noise
    caruana = CaruanaSelection(metric="log_loss").fit(X, y)
    np.testing.assert_array_equal(caruana.counts_, [1, 0])
    np.testing.assert_array_equal(caruana.predict_proba(X), X[:, 0])


@pytest.mark.parametrize("metric", ["accuracy", "log_loss", "f1_macro", "quadratic_kappa", "roc_auc"])
def test_never_scores_below_best_single_on_its_training_rows(metric: str) -> None:
    score = metrics.get(metric)
    for seed in range(2):
        X, y = synthetic(n=200, n_models=4, n_classes=3, signal=(1.0, 0.8, 0.6, 0.2), seed=seed)
        best = score(y, BestSingle(metric=metric).fit(X, y).predict_proba(X))
        got = score(y, CaruanaSelection(metric=metric, iterations=10).fit(X, y).predict_proba(X))
        assert got == best or score.better(got, best)
    # Four independent noisy models: a mix is smoother than any one, so log loss improves strictly.
    if metric == "log_loss":
        assert score.better(got, best)


def test_sorted_initialisation_starts_from_the_best_models() -> None:
    X, y = synthetic(n=200, n_models=3, signal=(0.5, 2.0, 1.0), seed=1)
    caruana = CaruanaSelection(metric="accuracy", iterations=2, init=2).fit(X, y)
    assert caruana.trajectory_[0] == ACCURACY(y, X[:, [1, 2]].mean(axis=1))
    with pytest.raises(ValueError, match=r"init must lie in 1..iterations \(2\); got 3"):
        CaruanaSelection(iterations=2, init=3).fit(X, y)


def test_the_config_shapes_the_candidate_and_names_a_bad_key() -> None:
    built = level2.get("caruana").build(config(metric="f1_macro", stack={"caruana_iterations": 40, "caruana_init": 2}))
    assert (built.metric, built.iterations, built.init) == ("f1_macro", 40, 2)
    with pytest.raises(ConfigError, match="caruana_init \\(5\\) exceeds caruana_iterations \\(4\\)"):
        config(stack={"caruana_iterations": 4, "caruana_init": 5})
    with pytest.raises(ConfigError, match="stack.caruana_iterations"):
        config(stack={"caruana_iterations": 0})


def test_the_stack_stage_scores_it_in_the_leaderboard(tmp_path: Path) -> None:
    cfg, paths = write_pipeline(tmp_path, "multiclass", stack={"candidates": ["best_single", "caruana"]})
    board = stack.run(cfg, paths).set_index("candidate")

    assert set(board.index) == {"best_single", "caruana"}
    # Its row is the nested CV of the same recipe: recompute it from the files the stage read.
    data = predictions.load_level_two(cfg, paths)
    expected = selection.cross_validate(level2.get("caruana").build(cfg), data.oof, data.y, data.fold, ACCURACY)
    assert board.loc["caruana", "cv_mean"] == pytest.approx(expected.fold_scores.mean())
    assert board.loc["caruana", "cv_mean"] >= board.loc["best_single", "cv_mean"]
