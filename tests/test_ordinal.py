"""`task: ordinal` (aptos2019-blindness-detection's shape): one regressed score per model, score
candidates at level two, cut points fitted on OOF and cross-validated, integer grades submitted.

The end-to-end run trains small_cnn at 16 px on digits 0-4 laid out as aptos2019 ships its files
(``train.csv``: ``id_code, diagnosis``; ``train_images/<id_code>.png``; ``test_images/``;
``sample_submission.csv``), each image's grade the digit it shows.
"""

from __future__ import annotations

import contextlib
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, precision_recall_fscore_support

from foldstack import level2
from foldstack.contracts import predictions, stack_output
from foldstack.core import metrics
from foldstack.core.config import ConfigError
from foldstack.core.errors import DataError
from foldstack.data.labels import Classes
from foldstack.level2 import decision, ordinal, selection
from foldstack.level2.ordinal import fit_cuts
from foldstack.pipeline import parse_pipeline
from foldstack.stages import report, stack, submit
from conftest import predict_images, run_to_stack, small_cnn_pipeline, write_digits

KAPPA = metrics.get("quadratic_kappa")
GRADES = 5


def aptos(**overrides) -> dict:
    """An aptos2019-shaped pipeline on a local folder."""
    raw = small_cnn_pipeline("aptos", "ordinal", "quadratic_kappa", {
        "id_column": "id_code", "label_column": "diagnosis", "train_dir": "train_images", "test_dir": "test_images"})
    return {**raw, **overrides}


# --- the metric on a score --------------------------------------------------------------------


def test_quadratic_kappa_rounds_a_score_to_the_grades_by_hand() -> None:
    """y = 0 0 1 2, scores 0.2 0.6 1.4 3.9. With 3 grades the last score is clipped to 2:
    grades 0 1 1 2, observed weighted disagreement 1, expected 5 (outer product of the
    marginals [2 1 1] and [1 2 1] over 4, weighted by (i - j)^2): kappa = 1 - 1/5. With 5
    grades it is 4: disagreement 1 + 4 = 5, expected 14 (marginals [2 1 1 0 0], [1 2 0 0 1]):
    kappa = 1 - 5/14. Class probabilities with the same arg-max score the same."""
    y = np.array([0, 0, 1, 2])
    score = np.array([[0.2], [0.6], [1.4], [3.9]])
    assert KAPPA(y, score, n_classes=3) == pytest.approx(0.8)
    assert KAPPA(y, score, n_classes=5) == pytest.approx(9 / 14)
    assert KAPPA(y, np.eye(3)[[0, 1, 1, 2]] * 0.8 + 0.1) == pytest.approx(0.8)
    # A fold without grade 3 or 4 still weighs the grades by their distance (0 to 4: 16).
    assert KAPPA(np.array([0, 4, 4, 0]), np.array([[0.0], [4.0], [4.2], [0.4]]), n_classes=5) == 1.0
    with pytest.raises(ValueError, match="'log_loss' needs class probabilities"):
        metrics.get("log_loss")(y, score)


def test_quadratic_kappa_is_scikit_learns_also_where_a_class_is_absent() -> None:
    rng = np.random.default_rng(3)
    for n_classes, absent in ((5, None), (5, 3), (2, None)):
        y = rng.integers(0, n_classes, 40)
        predicted = rng.integers(0, n_classes, 40)
        if absent is not None:
            y[y == absent], predicted[predicted == absent] = 0, 1
        expected = cohen_kappa_score(y, predicted, weights="quadratic", labels=np.arange(n_classes))
        assert KAPPA(y, np.eye(n_classes)[predicted]) == pytest.approx(expected)
    assert np.isnan(KAPPA(np.zeros(4, int), np.eye(3)[[0, 0, 0, 0]]))


def test_grades_count_the_cut_points_at_or_below_the_score() -> None:
    score = np.array([-3.0, 0.49, 0.5, 2.2, 9.0])
    assert metrics.grades(score, 5).tolist() == [0, 0, 1, 2, 4]
    assert metrics.grades(score, 5, np.array([0.1, 0.3, 2.5, 2.6])).tolist() == [0, 2, 2, 2, 4]


# --- cut points -----------------------------------------------------------------------------------


def shrunk_scores(n: int = 150, seed: int = 0, noise: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    """Grades and scores that order them well but at half their scale (as a network that
    regresses to the mean does): rounding sends grades 3 and 4 to 1 and 2; cut points at
    0.25, 0.75, ... recover them."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(GRADES), n // GRADES)
    return y, 0.5 * y + rng.normal(0, noise, len(y))


def test_fitted_cut_points_beat_rounding_where_they_must() -> None:
    y, score = shrunk_scores()
    cuts = fit_cuts(score, y, GRADES, KAPPA)
    assert np.all(np.diff(cuts) > 0)
    np.testing.assert_allclose(cuts, [0.25, 0.75, 1.25, 1.75], atol=0.15)
    rounded = KAPPA(y, score[:, None], n_classes=GRADES)
    assert rounded < 0.8
    assert KAPPA(y, metrics.grades(score, GRADES, cuts)[:, None], n_classes=GRADES) > 0.97
    # Scored honestly, on folds whose cut points never saw them, they still win.
    fold = np.arange(len(y)) % 3
    fold_scores = decision.choose(ordinal.RULE, "fitted", y, score[:, None], fold, KAPPA, GRADES).fold_scores
    assert fold_scores.min() > rounded + 0.15


def test_cross_validate_reports_the_nested_cut_points_cv() -> None:
    """The CV of an ordinal candidate: each fold cut at points fitted on the other folds' OOF
    scores (computed here by hand); the cut points kept are those fitted on every row."""
    y, score = shrunk_scores()
    X = np.stack([score, score + np.random.default_rng(1).normal(0, 0.2, len(y))], axis=1)[:, :, None]
    fold = np.arange(len(y)) % 3
    result = selection.cross_validate(level2.MeanBlend(), X, y, fold, KAPPA, GRADES)
    oof = X.mean(axis=1)[:, 0]
    np.testing.assert_allclose(result.oof[:, 0], oof)
    by_hand = [KAPPA(y[fold == k], metrics.grades(oof[fold == k], GRADES, fit_cuts(oof[fold != k], y[fold != k],
                                                                                    GRADES, KAPPA))[:, None],
                     n_classes=GRADES)
               for k in range(3)]
    np.testing.assert_allclose(result.fold_scores, by_hand)
    np.testing.assert_allclose(result.cuts, fit_cuts(oof, y, GRADES, KAPPA))
    in_sample = [KAPPA(y[fold == k], metrics.grades(oof[fold == k], GRADES, result.cuts)[:, None], n_classes=GRADES)
                 for k in range(3)]
    assert np.mean(in_sample) > np.mean(by_hand)
    np.testing.assert_allclose(result.rounded_scores, [KAPPA(y[fold == k], oof[fold == k, None], n_classes=GRADES)
                                                       for k in range(3)])
    board = selection.leaderboard({"mean": result}, KAPPA)
    assert board.loc[0, "cv_mean"] == pytest.approx(np.mean(by_hand))
    assert board.loc[0, "cv_rounded"] < board.loc[0, "cv_mean"]


# --- level two and the config ---------------------------------------------------------------------


def test_only_score_candidates_stack_an_ordinal_task_and_each_gives_a_score() -> None:
    cfg = parse_pipeline(aptos())
    names = selection.candidate_names(cfg, KAPPA)
    assert names == ["best_single", "mean", "weighted_mean", "lightgbm"]
    # Caruana's selection is registered for class probabilities only (not yet offered for a score).
    assert selection.left_out(cfg, KAPPA) == ["caruana", "logistic", "lightgbm_summary"]
    y, score = shrunk_scores(100)
    # The first model orders the grades well, the second barely.
    X = np.stack([2 * score, y + np.random.default_rng(2).normal(0, 3, len(y))], axis=1)[:, :, None]
    for name in names:
        estimator = level2.get(name).build(cfg).fit(X, y)
        out = estimator.predict_proba(X)
        assert out.shape == (len(y), 1), name
        assert KAPPA(y, out, n_classes=GRADES) > 0.6, name
    assert level2.get("best_single").build(cfg).fit(X, y).best_ == 0
    assert level2.get("weighted_mean").build(cfg).fit(X, y).weights_[0] > 0.8
    with pytest.raises(selection.StackError, match="'logistic' needs class probabilities"):
        selection.candidate_names(parse_pipeline(aptos(stack={"force": "logistic"})), KAPPA)


@pytest.mark.parametrize("overrides, key", [
    ({"metric": "log_loss"}, "metric = 'log_loss': .*task 'ordinal' needs a metric of grades"),
    ({"submission": {"format": "probabilities"}}, "submission = .*the format must be 'label'"),
    ({"models": [{"name": "m", "backbone": "small_cnn", "weights": "none", "label_smoothing": 0.1}]},
     "models = .*models\\[0\\].label_smoothing: not for task 'ordinal'.*\\(model 'm'\\)"),
])
def test_an_ordinal_pipeline_needs_a_metric_of_grades_label_submissions_and_no_smoothing(overrides, key) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_pipeline(aptos(**overrides))


def test_ordinal_grades_must_be_numbers() -> None:
    with pytest.raises(DataError, match="train.csv: task 'ordinal' needs numeric grades; label 'mild'"):
        Classes.from_labels(pd.Series(["0", "mild", "2"]), "ordinal", source="train.csv")
    classes = Classes.from_labels(pd.Series(["10", "2", "0"]), "ordinal")
    assert classes.names == ("0", "2", "10") and classes.columns == ("score",)


# --- end to end -------------------------------------------------------------------------------------


def write_aptos(folder: Path, n_train: int = 50, n_test: int = 15) -> pd.Series:
    """Digits 0-4 as aptos2019 lays them out; returns the test grades (the solution)."""
    ids = [f"{i:012x}" for i in range(7_000_000, 7_000_000 + n_train + n_test)]
    grades = pd.Series(write_digits(folder, ids, GRADES, n_train, ("train_images", "test_images")), index=ids, dtype=int)
    train_ids, test_ids = ids[:n_train], ids[n_train:]
    pd.DataFrame({"id_code": train_ids, "diagnosis": grades[train_ids].to_numpy()}).to_csv(
        folder / "train.csv", index=False)
    pd.DataFrame({"id_code": test_ids}).to_csv(folder / "test.csv", index=False)
    pd.DataFrame({"id_code": test_ids, "diagnosis": 0}).to_csv(folder / "sample_submission.csv", index=False)
    pd.DataFrame({"id_code": test_ids, "diagnosis": grades[test_ids].to_numpy()}).to_csv(
        folder / "solution.csv", index=False)
    return grades[test_ids]


@pytest.fixture(scope="module")
def stacked(tmp_path_factory) -> tuple:
    """The aptos-shaped competition downloaded, folded, trained, predicted and stacked: the
    config, its paths, the test grades, the leaderboard and what the stack stage printed."""
    root = tmp_path_factory.mktemp("aptos")
    truth = write_aptos(root / "competition")
    raw = aptos(data={**aptos()["data"], "source": {"type": "local", "path": str(root / "competition")}})
    cfg, paths, board, printed = run_to_stack(raw, root)
    return cfg, paths, truth, board, printed


def test_each_network_regresses_one_score_into_the_prediction_files(stacked) -> None:
    cfg, paths, *_ = stacked
    classes = Classes(tuple(str(g) for g in range(GRADES)), ordinal=True)
    oof = pd.read_parquet(paths.oof / "cnn.parquet")
    assert list(oof.columns) == ["id", "fold", "score"]
    test = pd.read_parquet(paths.test / "cnn.parquet")
    assert list(test.columns) == ["id", "score"]
    assert np.isfinite(oof["score"]).all() and oof["score"].nunique() > 1
    with pytest.raises(DataError, match="missing column\\(s\\) 0"):
        predictions.read_predictions(paths.test / "cnn.parquet", Classes(classes.names))
    import h5py

    with h5py.File(paths.models / "cnn" / "fold0" / "best.weights.h5", "r") as weights:
        # The network's one dense layer, its head: 128 pooled features to one output.
        assert weights["layers/dense/vars/0"].shape == (128, 1)


def test_stack_and_submit_write_integer_grades_in_the_sample_order(stacked) -> None:
    cfg, paths, truth, board, out = stacked
    assert set(board["candidate"]) == {"best_single", "mean", "weighted_mean", "lightgbm"}
    assert ("not scored for task 'ordinal' (they need class probabilities): caruana, logistic, lightgbm_summary"
            in out)
    chosen = json.loads((paths.stack / "chosen.json").read_text())
    assert chosen["ordinal"] is True and len(chosen["cuts"]) == GRADES - 1
    assert chosen["cv_mean"] == pytest.approx(board.loc[board["chosen"], "cv_mean"].item())

    path = submit.run(cfg, paths)
    written = pd.read_csv(path)
    sample = pd.read_csv(paths.data / "sample_submission.csv")
    assert list(written.columns) == ["id_code", "diagnosis"]
    assert written["id_code"].tolist() == sample["id_code"].tolist()
    assert written["diagnosis"].dtype == np.int64 and set(written["diagnosis"]) <= set(range(GRADES))
    # The grades are the saved model's test scores cut at the saved cut points.
    score = pd.read_parquet(paths.stack / "test.parquet").set_index("id").loc[sample["id_code"], "score"]
    expected = np.searchsorted(chosen["cuts"], score.to_numpy(), side="right")
    assert written["diagnosis"].tolist() == expected.tolist()
    local = pd.read_csv(paths.submissions / "index.csv")["local_lb"].iloc[-1]
    assert local == pytest.approx(cohen_kappa_score(truth.loc[written["id_code"]], written["diagnosis"],
                                                     weights="quadratic", labels=range(GRADES)))
    model = stack_output.read_model(paths.stack, ("cnn",))
    assert model.cuts == tuple(chosen["cuts"])
    # Unchanged OOF files: the stack stage only applies the saved model, and submit the saved cuts.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        stack.run(cfg, paths)
        again = submit.run(cfg, paths)
    assert "applied the saved" in printed.getvalue()
    assert pd.read_csv(again).equals(written)


def test_predict_images_gives_the_score_and_the_grade_submit_gives(stacked, tmp_path: Path) -> None:
    cfg, paths, *_ = stacked
    frame = predict_images(paths, "test_images", tmp_path / "graded.csv")
    assert list(frame.columns) == ["image", "label", "score", "distance", "unfamiliar"]
    stacked_test = pd.read_parquet(paths.stack / "test.parquet").set_index("id")
    ids = frame["image"].str.removesuffix(".png")
    np.testing.assert_allclose(frame["score"], stacked_test.loc[ids, "score"], atol=1e-5)
    cuts = json.loads((paths.stack / "chosen.json").read_text())["cuts"]
    assert frame["label"].tolist() == np.searchsorted(cuts, frame["score"], side="right").tolist()


class _Tables(HTMLParser):
    """Each ``<h2>`` heading of a page and the cells of the table after it, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._heading: str | None = None
        self._text: list[str] | None = None

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in ("h2", "td", "th"):
            self._text = []
        elif tag == "tr" and self._heading is not None:
            self.tables.setdefault(self._heading, []).append([])

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._heading = "".join(self._text)
        elif tag in ("td", "th"):
            self.tables[self._heading][-1].append("".join(self._text).strip())
        if tag in ("h2", "td", "th"):
            self._text = None

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)


def test_report_shows_an_ordinal_pipeline_by_its_grades(stacked) -> None:
    """The stack's per-class table has one row per grade: its support counted in folds.csv, its
    precision and recall those of the grades the saved cut points give the stack's OOF scores
    (not the scores rounded)."""
    cfg, paths, *_ = stacked
    page = report.run(cfg, paths).read_text()
    assert "Grad-CAM: cnn" in page
    parser = _Tables()
    parser.feed(page)
    chosen = json.loads((paths.stack / "chosen.json").read_text())
    shown = parser.tables[f"Per class: {chosen['name']} (stack)"]

    folds_csv = pd.read_csv(paths.folds)
    truth = folds_csv["label"].to_numpy()
    score = pd.read_parquet(paths.stack / "oof.parquet").set_index("id").loc[folds_csv["id"], "score"].to_numpy()

    def table(predicted: np.ndarray) -> list[list[str]]:
        precision, recall, f1, _ = precision_recall_fscore_support(truth, predicted, labels=range(GRADES),
                                                                   zero_division=0)
        return [["class", "precision", "recall", "f1", "support"]] + [
            [str(g), f"{precision[g]:.4f}", f"{recall[g]:.4f}", f"{f1[g]:.4f}", str((truth == g).sum())]
            for g in range(GRADES)]

    at_cuts = table(np.searchsorted(chosen["cuts"], score, side="right"))
    rounded = table(np.clip(np.floor(score + 0.5), 0, GRADES - 1).astype(int))
    assert at_cuts != rounded, "the fixture's cut points grade its OOF as rounding does: nothing to tell apart"
    assert shown == at_cuts
