"""The metrics registry against scikit-learn and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from foldstack.core import metrics

PROBA = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
Y = np.array([0, 1, 1, 0, 2])
PRED = np.array([0, 1, 2, 0, 2])
MULTILABEL_Y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
MULTILABEL_P = np.array([[0.9, 0.2, 0.6], [0.3, 0.7, 0.1], [0.4, 0.8, 0.2], [0.1, 0.4, 0.3]])


def test_registry_lists_every_metric_with_its_direction() -> None:
    assert metrics.names() == ["accuracy", "balanced_accuracy", "f1_macro", "f1_micro", "f2_micro", "log_loss", "mae",
                               "map_at_5", "mean_column_auc", "pauc_80", "quadratic_kappa", "r2", "rmse", "roc_auc"]
    assert [m for m in metrics.names() if not metrics.get(m).greater_is_better] == ["log_loss", "mae", "rmse"]
    assert [m for m in metrics.names() if metrics.get(m).on_values] == ["mae", "r2", "rmse"]
    assert [m for m in metrics.names() if metrics.get(m).ranks] == ["mean_column_auc", "pauc_80", "roc_auc"]
    assert [m for m in metrics.names() if metrics.get(m).thresholded] == ["accuracy", "balanced_accuracy", "f1_macro",
                                                                          "f1_micro", "f2_micro"]


def test_unknown_metric_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown metric 'nope'; known: accuracy, balanced_accuracy, f1_macro"):
        metrics.get("nope")


def test_better_follows_the_direction() -> None:
    assert metrics.get("accuracy").better(0.9, 0.8)
    assert metrics.get("log_loss").better(0.1, 0.2)
    assert not metrics.get("log_loss").better(0.2, 0.1)


@pytest.mark.parametrize(("name", "expected"), [
    ("accuracy", 0.8),
    ("log_loss", skm.log_loss(Y, PROBA)),
    ("roc_auc", skm.roc_auc_score(Y, PROBA, multi_class="ovr", average="macro")),
    ("f1_micro", skm.f1_score(Y, PRED, average="micro")),
    ("f1_macro", skm.f1_score(Y, PRED, average="macro")),
    ("quadratic_kappa", skm.cohen_kappa_score(Y, PRED, weights="quadratic")),
])
def test_multiclass_scores_match_sklearn(name: str, expected: float) -> None:
    assert metrics.get(name)(Y, PROBA) == pytest.approx(expected)


def test_binary_auc_uses_the_positive_column() -> None:
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    assert metrics.get("roc_auc")(y, np.c_[1 - p1, p1]) == pytest.approx(0.75)


def test_log_loss_is_clipped_so_a_confident_miss_is_finite() -> None:
    loss = metrics.get("log_loss")(np.array([0, 1]), np.array([[1.0, 0.0], [1.0, 0.0]]))
    assert loss == pytest.approx(-np.log(metrics.EPS) / 2, rel=1e-6)


def test_auc_skips_a_class_the_fold_does_not_hold() -> None:
    # Class 2 never occurs: AUC is the mean over classes 0 and 1 only.
    y = np.array([0, 1, 0, 1])
    proba = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.6, 0.2, 0.2], [0.2, 0.7, 0.1]])
    assert metrics.get("roc_auc")(y, proba) == pytest.approx(1.0)


@pytest.mark.parametrize(("name", "expected"), [
    ("accuracy", skm.accuracy_score(MULTILABEL_Y, MULTILABEL_P >= 0.5)),
    ("log_loss", skm.log_loss(MULTILABEL_Y.ravel(), MULTILABEL_P.ravel())),
    ("roc_auc", skm.roc_auc_score(MULTILABEL_Y, MULTILABEL_P, average="macro")),
    ("f1_micro", skm.f1_score(MULTILABEL_Y, MULTILABEL_P >= 0.5, average="micro")),
    ("f1_macro", skm.f1_score(MULTILABEL_Y, MULTILABEL_P >= 0.5, average="macro")),
])
def test_multilabel_scores_match_sklearn(name: str, expected: float) -> None:
    assert metrics.get(name)(MULTILABEL_Y, MULTILABEL_P) == pytest.approx(expected)


def test_kappa_refuses_multilabel() -> None:
    with pytest.raises(ValueError, match="single-label"):
        metrics.get("quadratic_kappa")(MULTILABEL_Y, MULTILABEL_P)


# --- mean column AUC, micro F-beta, MAP@k: against values worked out by hand ----------------------

#: Three one-hot columns (plant pathology's healthy, rust, scab) over four rows.
COLUMNS_Y = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 1], [1, 0, 0]])
COLUMNS_P = np.array([[0.9, 0.1, 0.3], [0.2, 0.7, 0.6], [0.4, 0.3, 0.8], [0.3, 0.2, 0.1]])


def test_mean_column_auc_by_hand() -> None:
    # Column 0: positives 0.9, 0.3 vs negatives 0.2, 0.4: pairs won 0.9>0.2, 0.9>0.4, 0.3>0.2 -> 3/4.
    # Column 1: positives 0.7, 0.3 vs negatives 0.1, 0.2: all four won -> 1.
    # Column 2: positive 0.8 vs 0.3, 0.6, 0.1: all three won -> 1.
    assert metrics.get("mean_column_auc")(COLUMNS_Y, COLUMNS_P) == pytest.approx((0.75 + 1 + 1) / 3)


def test_mean_column_auc_skips_a_column_absent_from_the_fold() -> None:
    """A fold without any positive of a class (all 0) or with nothing but (all 1) has no AUC for
    that column; it is left out of the mean, and with no column left the metric refuses."""
    absent = COLUMNS_Y.copy()
    absent[:, 2] = 0  # no scab in this fold
    assert metrics.get("mean_column_auc")(absent, COLUMNS_P) == pytest.approx((0.75 + 1) / 2)
    everywhere = absent.copy()
    everywhere[:, 1] = 1  # rust on every row: undefined too
    assert metrics.get("mean_column_auc")(everywhere, COLUMNS_P) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="no class has both positive and negative rows"):
        metrics.get("mean_column_auc")(np.zeros((4, 3), int), COLUMNS_P)


def test_mean_column_auc_of_single_label_rows_is_over_their_one_hot_columns() -> None:
    # Y = [0, 1, 1, 0, 2]: column 0 positives rows 0, 3 (0.7, 0.6) vs 0.1, 0.2, 0.1 -> 1;
    # column 1 positives rows 1, 2 (0.8, 0.3) vs 0.2, 0.3, 0.1: 0.8 wins 3; 0.3 beats 0.2, 0.1 and
    # ties 0.3 -> 2.5; 5.5/6; column 2 positive row 4 (0.8) vs 0.1, 0.1, 0.5, 0.1 -> 1.
    assert metrics.get("mean_column_auc")(Y, PROBA) == pytest.approx((1 + 5.5 / 6 + 1) / 3)


def test_f2_micro_by_hand_and_at_thresholds() -> None:
    # At 0.5 the predictions are [1,0,1], [0,1,0], [0,1,0], [0,0,0] against MULTILABEL_Y:
    # tp = 4, fp = 0, fn = 2 (row 2's class 0, row 3's class 2): F2 = 5*4 / (5*4 + 4*2 + 0) = 20/28.
    assert metrics.get("f2_micro")(MULTILABEL_Y, MULTILABEL_P) == pytest.approx(20 / 28)
    # Class thresholds 0.3, 0.5, 0.3 add row 2's class 0 (tp) and row 3's class 2 (tp) and
    # row 1's class 0 (0.3, fp): tp 6, fp 1, fn 0 -> 30 / 31.
    thresholds = np.array([0.3, 0.5, 0.3])
    assert metrics.get("f2_micro")(MULTILABEL_Y, MULTILABEL_P, thresholds) == pytest.approx(30 / 31)
    assert metrics.get("f2_micro")(MULTILABEL_Y, MULTILABEL_P, thresholds) == pytest.approx(
        skm.fbeta_score(MULTILABEL_Y, MULTILABEL_P >= thresholds, beta=2, average="micro"))
    # F1 at the same thresholds: 2*6 / (2*6 + 0 + 1) = 12/13; thresholds leave AUC alone.
    assert metrics.get("f1_micro")(MULTILABEL_Y, MULTILABEL_P, thresholds) == pytest.approx(12 / 13)
    assert metrics.get("roc_auc")(MULTILABEL_Y, MULTILABEL_P, thresholds) == metrics.get("roc_auc")(
        MULTILABEL_Y, MULTILABEL_P)


def test_f2_micro_with_a_class_absent_from_the_fold() -> None:
    # Class 2 absent from the truth; one false positive on it (row 0, 0.6). tp 3 (rows 0, 1, 2),
    # fn 1 (row 2's class 0), fp 1: F2 = 15 / (15 + 4 + 1) = 0.75.
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    assert metrics.get("f2_micro")(y, MULTILABEL_P) == pytest.approx(0.75)
    assert metrics.fbeta_from_counts(0, 0, 0, beta=2.0) == 0.0  # nothing true, nothing predicted


def test_map_at_5_by_hand() -> None:
    """Six classes, so the true class can fall outside the top five; a class absent from these
    rows (class 4) changes nothing."""
    proba = np.array([
        [0.50, 0.20, 0.10, 0.10, 0.05, 0.05],  # true 0: rank 1 -> 1
        [0.40, 0.30, 0.20, 0.05, 0.03, 0.02],  # true 2: rank 3 -> 1/3
        [0.30, 0.25, 0.20, 0.15, 0.06, 0.04],  # true 5: rank 6 -> 0
        [0.10, 0.10, 0.50, 0.20, 0.05, 0.05],  # true 1: tie with class 0 at 0.10, after it -> rank 4 -> 1/4
    ])
    y = np.array([0, 2, 5, 1])
    assert metrics.get("map_at_5")(y, proba) == pytest.approx((1 + 1 / 3 + 0 + 1 / 4) / 4)
    assert metrics.map_at_k(y, proba, k=1) == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="one true class per row"):
        metrics.get("map_at_5")(MULTILABEL_Y, MULTILABEL_P)
