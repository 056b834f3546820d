"""Multilabel thresholds fitted on the stacked OOF (``stack.thresholds``): the search, its nested
CV, and the stack and submit stages that save and use them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from foldstack.contracts import folds_file, stack_output
from foldstack.core import metrics
from foldstack.core.config import ConfigError, PipelineConfig
from foldstack.core.paths import Paths
from foldstack.data.labels import Classes, join_labels
from foldstack.level2 import decision, thresholds
from foldstack.level2.selection import StackError
from foldstack.pipeline import parse_pipeline
from foldstack.stages import predict, stack, submit

CLASSES = ("motif", "portrait", "river")
FOLDS = 4
F2 = metrics.get("f2_micro")


def scaled(n: int, seed: int = 0, n_models: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``(n, 3)`` and probabilities ``(n, n_models, 3)`` whose classes live on different
    scales, so that 0.5 is wrong for every class and no single threshold suits them all: class 0
    never reaches 0.5 (positives 0.25-0.5 over negatives 0.02-0.32), class 1's negatives mostly
    pass it (0.45-0.75 under positives 0.68-0.98), class 2 sits in between."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < [0.3, 0.4, 0.35]).astype(int)
    negatives = rng.uniform([0.02, 0.45, 0.10], [0.32, 0.75, 0.55], (n, 3))
    positives = rng.uniform([0.25, 0.68, 0.45], [0.50, 0.98, 0.90], (n, 3))
    base = np.where(y == 1, positives, negatives)
    noise = rng.normal(0, 0.02, (n, n_models, 3))
    return y, np.clip(base[:, None, :] + noise, 0.0, 1.0)


def folds_of(n: int) -> np.ndarray:
    return np.arange(n) % FOLDS


# --- the search ---------------------------------------------------------------------------------


def test_fitted_thresholds_sit_between_each_class_s_negatives_and_positives() -> None:
    y, X = scaled(400)
    proba = X[:, 0]
    per_class = thresholds.fit(y, proba, F2, "per_class")
    assert 0.2 <= per_class[0] <= 0.33 and 0.6 <= per_class[1] <= 0.75 and 0.35 <= per_class[2] <= 0.55, per_class
    one = thresholds.fit(y, proba, F2, "global")
    assert len(set(one)) == 1
    at_half = F2(y, proba)
    assert at_half < F2(y, proba, one) < F2(y, proba, per_class)


@pytest.mark.parametrize("mode", ["global", "per_class"])
def test_the_counting_search_finds_what_scoring_every_threshold_finds(mode: str) -> None:
    """f1/f2 micro are searched from per-class counts; the same metric without its counts form is
    scored from scratch at every grid value: both must land on the same thresholds."""
    y, X = scaled(150, seed=3)
    plain = dataclasses.replace(F2, from_counts=None)
    np.testing.assert_array_equal(thresholds.fit(y, X[:, 0], F2, mode), thresholds.fit(y, X[:, 0], plain, mode))


def test_a_class_without_positives_keeps_its_threshold() -> None:
    y, X = scaled(120, seed=4)
    y[:, 2] = 0  # no positive: every threshold above its probabilities is as good as another
    X[:, 0, 2] = 0.05
    fitted = thresholds.fit(y, X[:, 0], F2, "per_class")
    assert fitted[2] == thresholds.fit(y, X[:, 0], F2, "global")[2]


# --- nested CV and the choice -------------------------------------------------------------------


def test_auto_keeps_per_class_thresholds_scored_by_nested_cv_and_beats_one_half() -> None:
    """On classes of different scales per-class thresholds must win; the CV reported for them is
    nested: fold k is scored with thresholds fitted on the other folds alone."""
    y, X = scaled(400, seed=1)
    proba, fold = X[:, 0], folds_of(400)
    choice = decision.choose(thresholds.RULE, "auto", y, proba, fold, F2)

    assert choice.mode == "per_class" and set(choice.cv) == {"global", "per_class"}
    assert choice.cv["per_class"] > choice.cv["global"]
    by_hand = [F2(y[fold == k], proba[fold == k], thresholds.fit(y[fold != k], proba[fold != k], F2, "per_class"))
               for k in range(FOLDS)]
    np.testing.assert_allclose(choice.fold_scores, by_hand, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(choice.values, thresholds.fit(y, proba, F2, "per_class"))  # then every row

    fixed = decision.choose(thresholds.RULE, "fixed", y, proba, fold, F2)
    assert fixed.mode == "fixed" and (fixed.values == 0.5).all()
    np.testing.assert_allclose(fixed.fold_scores, [F2(y[fold == k], proba[fold == k]) for k in range(FOLDS)])
    assert choice.fold_scores.mean() > fixed.fold_scores.mean() + 0.2


def test_in_sample_thresholds_flatter_the_score_the_nested_cv_reports() -> None:
    """On noise, thresholds fitted on the very rows they score look better than the nested CV,
    which is why the CV fits them without the fold it scores."""
    rng = np.random.default_rng(0)
    y, proba = (rng.random((80, 3)) < 0.5).astype(int), rng.random((80, 3))
    fold = folds_of(80)
    f1 = metrics.get("f1_macro")
    nested = decision.choose(thresholds.RULE, "per_class", y, proba, fold, f1).fold_scores
    in_sample = [f1(y[fold == k], proba[fold == k], thresholds.fit(y[fold == k], proba[fold == k], f1, "per_class"))
                 for k in range(FOLDS)]
    assert np.mean(in_sample) > nested.mean() + 0.03


def test_thresholds_are_refused_where_they_change_nothing() -> None:
    with pytest.raises(StackError, match="stack.thresholds: 'auto' fits thresholds .* metric 'roc_auc' does not"):
        thresholds.check("auto", metrics.get("roc_auc"))
    thresholds.check("fixed", metrics.get("roc_auc"))
    with pytest.raises(ConfigError, match=r"stack = .*thresholds 'per_class' needs task 'multilabel' "
                                          r"\(task is 'multiclass'\)"):
        config(Path("."), task="multiclass", metric="accuracy", stack={"thresholds": "per_class"})


# --- the stack and submit stages ----------------------------------------------------------------


def config(root: Path, **overrides) -> PipelineConfig:
    raw = {
        "name": "art", "task": "multilabel", "metric": "f2_micro",
        "data": {"source": {"type": "local", "path": str(root / "src")}, "id_column": "id",
                 "solution": "solution.csv"},
        "models": [{"name": "a", "backbone": "small_cnn", "image_size": 16},
                   {"name": "b", "backbone": "small_cnn", "image_size": 16}],
        "folds": {"k": FOLDS},
        "stack": {"candidates": ["mean", "best_single"], "thresholds": "auto"},
        "submission": {"format": "multilabel"},
    }
    return parse_pipeline({**raw, **overrides})


def write_pipeline(root: Path, **overrides) -> tuple[PipelineConfig, Paths]:
    """folds.csv, two models' OOF and test predictions, an imet-like sample submission
    (``id, attribute_ids``) and a solution, as the earlier stages leave them."""
    cfg = config(root, **overrides)
    paths = Paths.for_pipeline(cfg.name, root)
    n, n_test = 240, 60
    y, X = scaled(n + n_test, seed=2, n_models=2)
    names = np.array(CLASSES)
    labels = [" ".join(names[row == 1]) for row in y]
    ids = [f"{i:05x}" for i in range(n + n_test)]
    paths.folds.parent.mkdir(parents=True)
    # folds.csv joins a row's classes as every stage reads them; the solution as the competition ships it.
    internal = [join_labels(names[row == 1]) for row in y[:n]]
    folds = pd.DataFrame({"id": ids[:n], "label": internal, "fold": folds_of(n)})
    folds_file.write(paths.folds, folds, Classes.from_labels(folds["label"], "multilabel"), "multilabel")
    for m, model in enumerate(cfg.models):
        for folder, rows, extra in ((paths.oof, slice(0, n), {"fold": folds_of(n)}), (paths.test, slice(n, None), {})):
            folder.mkdir(parents=True, exist_ok=True)
            frame = pd.DataFrame(X[rows, m], columns=list(CLASSES)).assign(id=ids[rows], **extra)
            frame.to_parquet(folder / f"{model.name}.parquet", index=False)
    paths.data.mkdir(parents=True)
    pd.DataFrame({"id": ids[n:], "attribute_ids": "motif"}).to_csv(paths.data / "sample_submission.csv", index=False)
    pd.DataFrame({"id": ids[n:], "label": labels[n:]}).to_csv(paths.data / "solution.csv", index=False)
    return cfg, paths


def test_stack_scores_candidates_with_nested_thresholds_saves_them_and_submit_uses_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, paths = write_pipeline(tmp_path / "auto")
    board = stack.run(cfg, paths)

    assert board["thresholds"].tolist() == ["per_class", "per_class"]
    chosen = json.loads((paths.stack / "chosen.json").read_text())
    assert chosen["thresholds"]["mode"] == "per_class" and list(chosen["thresholds"]["values"]) == list(CLASSES)
    values = np.array(list(chosen["thresholds"]["values"].values()))
    assert "thresholds: per_class" in capsys.readouterr().out

    # The leaderboard's CV is the nested thresholded score of the chosen candidate's own OOF.
    folds = pd.read_csv(paths.folds, dtype=str, keep_default_na=False)
    y = Classes(CLASSES, multilabel=True).encode(folds["label"])
    oof = pd.read_parquet(paths.stack / "oof.parquet").set_index("id").loc[folds["id"], list(CLASSES)].to_numpy()
    fold = folds["fold"].astype(int).to_numpy()
    row = board.set_index("candidate").loc[chosen["name"]]
    for k in range(FOLDS):
        fitted = thresholds.fit(y[fold != k], oof[fold != k], F2, "per_class")
        assert row[f"fold_{k}"] == pytest.approx(F2(y[fold == k], oof[fold == k], fitted), abs=1e-12)
    np.testing.assert_array_equal(values, thresholds.fit(y, oof, F2, "per_class"))
    assert chosen["cv_mean"] == pytest.approx(row["cv_mean"])

    # Thresholds at 0.5 (the default) score far lower on the same OOF files.
    fixed_cfg, fixed_paths = write_pipeline(tmp_path / "fixed", stack={"candidates": ["mean", "best_single"]})
    fixed = stack.run(fixed_cfg, fixed_paths)
    assert json.loads((fixed_paths.stack / "chosen.json").read_text())["thresholds"]["mode"] == "fixed"
    assert row["cv_mean"] > fixed["cv_mean"].max() + 0.2

    # submit writes each row's classes at or above their thresholds, and scores them so.
    path = submit.run(cfg, paths)
    test = pd.read_parquet(paths.stack / "test.parquet").set_index("id")
    written = pd.read_csv(path, dtype=str, keep_default_na=False).set_index("id")["attribute_ids"]
    expected = [" ".join(c for c, value, t in zip(CLASSES, test.loc[i, list(CLASSES)], values) if value >= t)
                for i in written.index]
    assert written.tolist() == expected
    assert written.tolist() != [" ".join(c for c in CLASSES if test.loc[i, c] >= 0.5) for i in written.index]
    solution = pd.read_csv(paths.data / "solution.csv", dtype=str, keep_default_na=False).set_index("id")["label"]
    truth = Classes(CLASSES, multilabel=True).encode(solution.loc[written.index].str.split().map(join_labels))
    local = pd.read_csv(paths.submissions / "index.csv")["local_lb"].item()
    assert local == pytest.approx(F2(truth, test.loc[written.index, list(CLASSES)].to_numpy(), values))

    # The saved model carries them, for predict --images, and a test-only rerun keeps them.
    assert stack_output.read_model(paths.stack, ("a", "b")).thresholds == tuple(values)
    stack.run(cfg, paths)
    assert json.loads((paths.stack / "chosen.json").read_text())["thresholds"] == chosen["thresholds"]


def test_submit_build_uses_thresholds_by_class_name() -> None:
    proba = pd.DataFrame({"motif": [0.3, 0.1], "portrait": [0.6, 0.9], "river": [0.5, 0.2]}, index=["x", "y"])
    sample = pd.DataFrame({"id": ["x", "y"], "attribute_ids": ""})
    by_name = pd.Series({"river": 0.55, "motif": 0.25, "portrait": 0.7})
    built = submit.build(proba, sample, "id", "multilabel", by_name)
    assert built["attribute_ids"].tolist() == ["motif", "portrait"]
    assert submit.build(proba, sample, "id", "multilabel")["attribute_ids"].tolist() == ["portrait river", "portrait"]


def test_predict_images_labels_classes_at_their_thresholds(tmp_path: Path) -> None:
    files = [tmp_path / "a.png", tmp_path / "b.png"]
    proba = np.array([[0.3, 0.6, 0.5], [0.1, 0.9, 0.2]])
    table = predict._table(tmp_path, files, Classes(CLASSES, multilabel=True), proba, None, None, (0.25, 0.7, 0.55))
    assert table["label"].tolist() == ["motif", "portrait"]
    at_half = predict._table(tmp_path, files, Classes(CLASSES, multilabel=True), proba, None, None)
    assert at_half["label"].tolist() == ["portrait river", "portrait"]
