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
    assert metrics.names() == ["accuracy", "f1_macro", "f1_micro", "log_loss", "quadratic_kappa", "roc_auc"]
    assert [m for m in metrics.names() if not metrics.get(m).greater_is_better] == ["log_loss"]
    assert [m for m in metrics.names() if metrics.get(m).ranks] == ["roc_auc"]


def test_unknown_metric_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown metric 'nope'; known: accuracy, f1_macro"):
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
